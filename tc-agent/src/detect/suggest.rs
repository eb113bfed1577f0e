//! `suggest`: the policy that pushes back on an event (to be written).
