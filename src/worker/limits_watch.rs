//! Watches the rules file. Editors save by writing in place or by renaming
//! a new file over the old one, so the parent directory is watched and
//! events are matched by file name; a 1 s check of the file's bytes catches
//! what a file system does not report. Each distinct content is judged once:
//! installed when valid and different from the rules in force, rejected
//! (logged with line and reason, counted, audited) when not.

use std::path::{Path, PathBuf};
use std::sync::Weak;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use sha2::{Digest, Sha256};

use crate::guard::{Guard, read_rules};

fn fingerprint(path: &Path) -> Option<[u8; 32]> {
    std::fs::read(path).ok().map(|b| Sha256::digest(&b).into())
}

pub async fn run(guard: Weak<Guard>, path: PathBuf) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let name = path.file_name().map(|n| n.to_os_string());
    let watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if let Ok(ev) = ev
            && ev
                .paths
                .iter()
                .any(|p| p.file_name().map(|n| n.to_os_string()) == name)
        {
            let _ = tx.send(());
        }
    });
    let _watcher = match watcher {
        Ok(mut w) => {
            let dir = path
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            if let Err(e) = w.watch(dir, RecursiveMode::NonRecursive) {
                tracing::warn!(error = %e, "rules file not watched; checked every second instead");
            }
            Some(w)
        }
        Err(e) => {
            tracing::warn!(error = %e, "no file watcher; the rules file is checked every second");
            None
        }
    };
    let mut seen = fingerprint(&path);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = rx.recv() => {
                // Let a burst of events (truncate, write, rename) settle.
                tokio::time::sleep(Duration::from_millis(100)).await;
                while rx.try_recv().is_ok() {}
            }
            _ = tick.tick() => {}
        }
        let Some(g) = guard.upgrade() else { return };
        let now = fingerprint(&path);
        if now.is_none() || now == seen {
            continue;
        }
        seen = now;
        match read_rules(&path) {
            Ok(set) if set.version == g.limits().set.version => {}
            Ok(set) => g.install(set).await,
            Err(e) => g.reject(&e).await,
        }
    }
}
