//! Logging: `tracing` to stdout, text or JSON, filtered by `RUST_LOG`
//! (default `info`). Request spans carry the request id; identities are
//! never recorded (their types' `Debug` prints `..`).

use tracing_subscriber::EnvFilter;

pub fn init(format: &str) {
    let filter = quiet_watcher(
        std::env::var("RUST_LOG").ok().as_deref(),
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    );
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_writer(std::io::stdout);
    let _ = if format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// The file watcher (`notify`) logs each event it sees at debug/trace. With
/// `RUST_LOG=trace` and the log written to a file in the rules file's
/// directory (which is watched), each line would be an event that logs a
/// line: a loop that burns a core. So `notify` stays at `info` unless
/// `RUST_LOG` names it.
fn quiet_watcher(rust_log: Option<&str>, filter: EnvFilter) -> EnvFilter {
    if rust_log.is_some_and(|v| v.contains("notify")) {
        return filter;
    }
    match "notify=info".parse() {
        Ok(d) => filter.add_directive(d),
        Err(_) => filter,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watcher_stays_at_info_unless_named() {
        let f = quiet_watcher(Some("trace"), EnvFilter::new("trace"));
        assert!(f.to_string().contains("notify=info"), "{f}");
        let f = quiet_watcher(Some("notify=trace"), EnvFilter::new("notify=trace"));
        assert!(!f.to_string().contains("notify=info"), "{f}");
    }
}
