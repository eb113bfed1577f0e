//! Unit tests of the control socket: framing, limits, credentials,
//! permissions and a request that panics.

use super::*;

fn big() -> Arc<Semaphore> {
    Arc::new(Semaphore::new(BIG_REQUESTS))
}

async fn read(mut input: &[u8], max: usize) -> (Result<Bytes, ReadError>, usize) {
    let mut buf = BytesMut::new();
    let r = read_request(&mut input, &mut buf, max, &big()).await;
    (r.map(|(b, _)| b), input.len())
}

#[tokio::test]
async fn a_request_ends_at_its_newline_or_at_the_end_of_the_stream() {
    let (r, rest) = read(b"{\"cmd\":\"status\"}\nmore", 100).await;
    assert_eq!(&r.unwrap()[..], b"{\"cmd\":\"status\"}");
    assert_eq!(rest, 0, "what follows the line may have been read");
    let (r, _) = read(b"{\"cmd\":\"status\"}", 100).await;
    assert_eq!(&r.unwrap()[..], b"{\"cmd\":\"status\"}");
    assert!(matches!(read(b"", 100).await.0, Err(ReadError::Closed)));
}

#[tokio::test]
async fn a_request_of_the_cap_fits_and_one_byte_more_does_not() {
    let mut exact = vec![b'x'; 1000];
    exact.push(b'\n');
    assert_eq!(read(&exact, 1000).await.0.unwrap().len(), 1000);
    let over = vec![b'x'; 1001];
    assert!(matches!(
        read(&over, 1000).await.0,
        Err(ReadError::TooLarge)
    ));
}

#[tokio::test]
async fn sixty_four_mib_without_a_newline_is_refused_after_the_cap() {
    let input = vec![b'a'; 64 << 20];
    let (r, rest) = read(&input, MAX_REQUEST).await;
    assert!(matches!(r, Err(ReadError::TooLarge)));
    // It stopped reading one byte past the cap.
    assert_eq!(input.len() - rest, MAX_REQUEST + 1);
}

#[tokio::test]
async fn big_requests_wait_for_a_permit() {
    let big = big();
    let held: Vec<_> = (0..BIG_REQUESTS)
        .map(|_| big.clone().try_acquire_owned().unwrap())
        .collect();
    let input = vec![b'x'; SMALL_REQUEST * 2];
    let mut r = &input[..];
    let mut buf = BytesMut::new();
    let waited = tokio::time::timeout(
        Duration::from_millis(100),
        read_request(&mut r, &mut buf, MAX_REQUEST, &big),
    )
    .await;
    assert!(waited.is_err(), "read past the small size without a permit");
    assert_eq!(
        buf.len(),
        SMALL_REQUEST,
        "buffered more than the small size"
    );
    drop(held);
    let (req, permit) = read_request(&mut r, &mut buf, MAX_REQUEST, &big)
        .await
        .unwrap();
    assert_eq!(req.len(), SMALL_REQUEST * 2);
    assert!(permit.is_some());
    drop(permit);
    assert_eq!(big.available_permits(), BIG_REQUESTS);
}

#[tokio::test]
async fn a_body_is_exactly_the_bytes_announced() {
    // Part of it came with the line; the rest is read, then the end.
    let mut body = b"abc".to_vec();
    read_body(&mut &b"def"[..], &mut body, 6).await.unwrap();
    assert_eq!(body, b"abcdef");
    // More than announced follows: the body is not taken cut short.
    let mut body = b"abc".to_vec();
    assert!(matches!(
        read_body(&mut &b"defgh"[..], &mut body, 6).await,
        Err(ReadError::TooLarge)
    ));
    // All of it came with the line.
    let mut body = b"abc".to_vec();
    read_body(&mut &b""[..], &mut body, 3).await.unwrap();
    assert_eq!(body, b"abc");
    // More than announced came with the line.
    let mut body = b"abcd".to_vec();
    assert!(matches!(
        read_body(&mut &b""[..], &mut body, 3).await,
        Err(ReadError::TooLarge)
    ));
    // The stream ends first.
    let mut body = b"ab".to_vec();
    assert!(matches!(
        read_body(&mut &b"c"[..], &mut body, 6).await,
        Err(ReadError::Closed)
    ));
    assert_eq!(body, b"abc", "what did arrive is left for the error");
}

/// The apply request of a 1,024-channel policy with 65,536 distinct
/// IPv4 and 65,536 IPv6 source prefixes (quoted, as IPv6 often is).
fn big_apply() -> String {
    let mut text = String::from("channels:\n");
    for i in 0..1024u32 {
        text.push_str(&format!("  - name: channel-{i:04}\n    from: ["));
        for j in 0..64u32 {
            let n = i * 64 + j;
            text.push_str(&format!(
                "\"198.{}.{}.{}/32\", \"2001:db8:{:x}:{:x}::/64\", ",
                18 + (n >> 16),
                (n >> 8) & 0xff,
                n & 0xff,
                n >> 16,
                n & 0xffff
            ));
        }
        text.push_str(&format!(
            "]\n    protocol: udp\n    ports: [{}]\n    limit: {{bandwidth: 100Mbit, burst: 1MiB}}\n",
            1000 + i
        ));
    }
    let p = crate::policy::Policy::parse(&text, "big.yaml").unwrap();
    assert_eq!(p.channels.len(), 1024);
    serde_json::to_string(&Request::Apply {
        file: "big.yaml".into(),
        text,
    })
    .unwrap()
}

#[test]
fn the_cap_fits_the_largest_policies_with_room_to_spare() {
    let req = big_apply();
    eprintln!(
        "1,024 channels, 65,536 + 65,536 prefixes: {} bytes as a request",
        req.len()
    );
    assert!(req.len() < MAX_REQUEST / 2, "{}", req.len());
    // ...and a few MiB more do not.
    assert!(req.len() + (5 << 20) > MAX_REQUEST, "{}", req.len());
    // A policy at the parser's own limit, with a newline every 66
    // bytes and quotes, still fits as a request.
    let line = "# \"padding\" padding padding padding padding padding padding pad\n";
    let text = line.repeat(crate::policy::MAX_FILE_BYTES / line.len());
    assert!(text.len() <= crate::policy::MAX_FILE_BYTES);
    let req = serde_json::to_string(&Request::Apply {
        file: "p.yaml".into(),
        text,
    })
    .unwrap();
    eprintln!(
        "a policy at the file limit: {} bytes as a request",
        req.len()
    );
    assert!(req.len() < MAX_REQUEST, "{}", req.len());
}

#[test]
fn root_does_everything_the_group_reads_others_nothing() {
    let g = SocketGroup {
        name: "tc".into(),
        gid: 500,
    };
    assert_eq!(authorize(0, 0, &[], None), Some(Access::Full));
    assert_eq!(authorize(0, 7, &[], Some(&g)), Some(Access::Full));
    assert_eq!(authorize(1000, 500, &[], Some(&g)), Some(Access::ReadOnly));
    assert_eq!(
        authorize(1000, 1000, &[4, 500], Some(&g)),
        Some(Access::ReadOnly)
    );
    assert_eq!(authorize(1000, 1000, &[4], Some(&g)), None);
    assert_eq!(authorize(1000, 500, &[500], None), None);
}

#[test]
fn socket_groups_resolve_by_name_or_number() {
    assert_eq!(SocketGroup::resolve("0").unwrap().gid, 0);
    assert_eq!(SocketGroup::resolve("root").unwrap().gid, 0);
    let e = SocketGroup::resolve("no-such-group-here").unwrap_err();
    assert!(e.to_string().contains("no such group"), "{e}");
}

#[tokio::test]
async fn peer_groups_are_the_peers_supplementary_groups() {
    let (a, _b) = UnixStream::pair().unwrap();
    let mut ours = nix::unistd::getgroups()
        .unwrap()
        .into_iter()
        .map(|g| g.as_raw())
        .collect::<Vec<_>>();
    let mut theirs = peer_groups(&a).unwrap();
    ours.sort_unstable();
    theirs.sort_unstable();
    assert_eq!(ours, theirs);
}

#[tokio::test]
async fn a_panicking_request_leaves_the_lock_usable() {
    let state = Arc::new(Mutex::new(1u32));
    let r = locked(state.clone(), |n: &mut u32| {
        *n += 1;
        panic!("boom in a request")
    })
    .await;
    let Err(r) = r else {
        panic!("the panic was not caught")
    };
    assert!(!r.ok);
    assert!(
        r.error.as_deref().unwrap().starts_with("internal error:"),
        "{r:?}"
    );
    let r = locked(state.clone(), |n: &mut u32| *n).await;
    assert_eq!(r.ok(), Some(2));
}

fn config(state_dir: &Path, socket: PathBuf, group: Option<SocketGroup>) -> AgentConfig {
    AgentConfig {
        ifaces: vec![],
        xdp: vec![],
        policy: None,
        pin_dir: PathBuf::new(),
        state_dir: state_dir.to_path_buf(),
        socket,
        sample_every: Duration::from_secs(1),
        socket_group: group,
        detach_on_exit: false,
        conn_table_size: tc_common::DEFAULT_MAX_CONNS,
        conn_timeouts: tc_common::ConnConfig::default(),
        interaction_table_size: tc_common::DEFAULT_MAX_INTERACTIONS,
        max_unnamed: 100,
        metrics_addr: None,
        detect: true,
    }
}

fn mode(p: &Path) -> (u32, u32) {
    let m = std::fs::metadata(p).unwrap();
    (m.mode() & 0o7777, m.gid())
}

#[tokio::test]
async fn the_socket_group_reaches_the_socket_and_nothing_else() {
    // The test command runs as root (it loads eBPF programs); chown needs it.
    assert!(
        nix::unistd::geteuid().is_root(),
        "run the tests as root: this one changes a socket's group"
    );
    let dir = std::env::temp_dir().join(format!("tc-agent-sock-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::write(dir.join("agent.lock"), "").unwrap();
    std::fs::set_permissions(
        dir.join("agent.lock"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let group = SocketGroup::resolve("65534").unwrap();

    // Root only: the socket is 0600 and the directory stays as it was.
    let socket = dir.join("agent.sock");
    drop(bind_socket(&config(&dir, socket.clone(), None)).unwrap());
    assert_eq!(mode(&socket).0, 0o600);
    assert_eq!(mode(&dir).0, 0o700);

    // With a group, in the state directory: socket 0660 and directory
    // 0710 with the group, the lock private.
    drop(bind_socket(&config(&dir, socket.clone(), Some(group.clone()))).unwrap());
    assert_eq!(mode(&socket), (0o660, 65534));
    assert_eq!(mode(&dir), (0o710, 65534));
    assert_eq!(mode(&dir.join("agent.lock")).0, 0o600);

    // Elsewhere, the directory is not the agent's to change.
    let other = dir.join("elsewhere");
    std::fs::create_dir(&other).unwrap();
    std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o755)).unwrap();
    let socket = other.join("agent.sock");
    drop(bind_socket(&config(&dir, socket.clone(), Some(group))).unwrap());
    assert_eq!(mode(&socket), (0o660, 65534));
    assert_eq!(mode(&other).0, 0o755);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn throttled_warnings_count_what_they_held_back() {
    let t = Throttle::new();
    assert_eq!(t.pass(), Some(0));
    assert_eq!(t.pass(), None);
    assert_eq!(t.pass(), None);
    t.state.lock().0 = Instant::now();
    assert_eq!(t.pass(), Some(2));
}

/// The request the server reads from `line`, or the error it answers
/// with (as [`Server`]'s connection handler words it).
fn parse(line: &str) -> Result<Request, String> {
    serde_json::from_str::<Request>(line).map_err(|e| format!("bad request: {e}"))
}

#[test]
fn events_and_suggest_requests_parse_with_their_defaults() {
    assert!(matches!(
        parse(r#"{"cmd":"events"}"#),
        Ok(Request::Events { since: None })
    ));
    assert!(matches!(
        parse(r#"{"cmd":"events","since":42}"#),
        Ok(Request::Events { since: Some(42) })
    ));
    match parse(r#"{"cmd":"suggest","id":"dos-1"}"#) {
        Ok(Request::Suggest { id, mode }) => {
            assert_eq!(id, "dos-1");
            assert_eq!(mode, crate::policy::Mode::Enforce);
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        parse(r#"{"cmd":"suggest","id":"dos-1","mode":"monitor"}"#),
        Ok(Request::Suggest {
            mode: crate::policy::Mode::Monitor,
            ..
        })
    ));
    // What the CLI sends is what the server reads.
    let sent = serde_json::to_string(&Request::Events { since: Some(7) }).unwrap();
    assert_eq!(sent, r#"{"cmd":"events","since":7}"#);
}

#[test]
fn malformed_events_and_suggest_requests_get_a_clear_error() {
    for (line, says) in [
        (r#"{"cmd":"events","since":-1}"#, "invalid value"),
        (r#"{"cmd":"events","since":"yesterday"}"#, "invalid type"),
        (r#"{"cmd":"suggest"}"#, "missing field `id`"),
        (r#"{"cmd":"suggest","id":7}"#, "invalid type"),
        (
            r#"{"cmd":"suggest","id":"dos-1","mode":"block"}"#,
            "unknown variant `block`, expected `enforce` or `monitor`",
        ),
        (r#"{"cmd":"event"}"#, "unknown variant `event`"),
    ] {
        let e = parse(line).expect_err(line);
        assert!(
            e.starts_with("bad request: ") && e.contains(says),
            "{line}: {e}"
        );
    }
}
