//! Background loops. Each holds only a `Weak` reference to what it serves,
//! so it ends by itself when the service (or a test's app) is dropped.
//!
//! - [`limits_watch`]: the rules file, watched with `notify` (plus a 1 s
//!   check of its contents, for file systems that drop events); a valid edit
//!   is installed, an invalid one rejected whole.
//! - [`ban_refresh`]: the bans version, polled each second, and the shield's
//!   idle buckets, forgotten each minute.

pub mod ban_refresh;
pub mod limits_watch;

use std::sync::Arc;

use crate::guard::Guard;

/// Starts every loop for `guard` on the store's runtime.
pub fn start(guard: &Arc<Guard>) {
    let rt = crate::store::redis::redis_runtime();
    rt.spawn(ban_refresh::run(Arc::downgrade(guard)));
    if let Some(path) = guard.file() {
        rt.spawn(limits_watch::run(Arc::downgrade(guard), path.to_path_buf()));
    }
}
