//! The control socket: one JSON request per connection.

use super::*;

pub(super) fn bind_socket(path: &std::path::Path) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        bail!(
            "another tc-agent is already serving {}; stop it or use --socket",
            path.display()
        );
    }
    let _ = std::fs::remove_file(path);
    let l = UnixListener::bind(path)
        .with_context(|| format!("binding control socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

pub(super) async fn serve(stream: UnixStream, agent: Arc<Mutex<Agent>>) {
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    if BufReader::new(r).read_line(&mut line).await.is_err() {
        return;
    }
    let resp = match serde_json::from_str::<Request>(&line) {
        Err(e) => Response {
            ok: false,
            error: Some(format!("bad request: {e}")),
            data: serde_json::Value::Null,
        },
        Ok(req) => {
            let r =
                tokio::task::spawn_blocking(move || agent.lock().expect("agent lock").handle(req))
                    .await;
            match r {
                Ok(Ok(data)) => Response {
                    ok: true,
                    error: None,
                    data,
                },
                Ok(Err(e)) => Response {
                    ok: false,
                    error: Some(format!("{e:#}")),
                    data: serde_json::Value::Null,
                },
                Err(e) => Response {
                    ok: false,
                    error: Some(format!("internal error: {e}")),
                    data: serde_json::Value::Null,
                },
            }
        }
    };
    let mut out = serde_json::to_vec(&resp).unwrap_or_default();
    out.push(b'\n');
    let _ = w.write_all(&out).await;
}
