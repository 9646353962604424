//! The anti-abuse edge, before any domain work: who the client is (IP,
//! through trusted proxies only). The rules engine, the in-process governor
//! limiter and the sold-out cache will live here too.

pub mod client_ip;
