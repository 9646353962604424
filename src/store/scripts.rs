//! The Lua scripts, embedded at compile time and loaded once per process.
//! `redis::Script` sends EVALSHA and, on `NOSCRIPT` (a fresh or restarted
//! Redis), loads the body and sends EVALSHA again, so no caller handles it.
//! A call with many arguments (a claim batch) is built straight into one
//! command instead ([`evalsha`], [`run`]): `ScriptInvocation` allocates
//! each argument on its own and copies it again into the command.

use std::sync::LazyLock;

use redis::aio::ConnectionLike;
use redis::{Cmd, FromRedisValue, RedisResult, Script};

/// An `EVALSHA` of `script` with `nkeys` keys: add the keys, then the
/// arguments, then send it with [`run`].
pub(super) fn evalsha(script: &Script, nkeys: usize) -> Cmd {
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(script.get_hash()).arg(nkeys);
    cmd
}

/// Sends an [`evalsha`] command; on `NOSCRIPT` (a fresh or restarted
/// Redis) loads `script` and sends it once more, as `Script` does.
pub(super) async fn run<T: FromRedisValue>(
    script: &Script,
    cmd: &Cmd,
    conn: &mut impl ConnectionLike,
) -> RedisResult<T> {
    match cmd.query_async(conn).await {
        Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
            script.prepare_invoke().load_async(conn).await?;
            cmd.query_async(conn).await
        }
        r => r,
    }
}

macro_rules! script {
    ($name:ident, $file:literal) => {
        pub static $name: LazyLock<Script> =
            LazyLock::new(|| Script::new(include_str!(concat!("../../lua/", $file))));
    };
}

/// A script whose text starts with the hash cache and the rules engine
/// (`hcache.lua`, `rules_core.lua`).
macro_rules! with_rules {
    ($name:ident, $file:literal) => {
        pub static $name: LazyLock<Script> = LazyLock::new(|| {
            Script::new(concat!(
                include_str!("../../lua/hcache.lua"),
                include_str!("../../lua/rules_core.lua"),
                include_str!(concat!("../../lua/", $file))
            ))
        });
    };
}

/// A script whose text starts with `num.lua` (strict counters).
macro_rules! with_num {
    ($name:ident, $file:literal) => {
        pub static $name: LazyLock<Script> = LazyLock::new(|| {
            Script::new(concat!(
                include_str!("../../lua/num.lua"),
                include_str!(concat!("../../lua/", $file))
            ))
        });
    };
}

with_rules!(CLAIM, "claim.lua");
with_num!(REDEEM, "redeem.lua");
with_num!(ROLLBACK, "rollback.lua");
script!(INSPECT_CODE, "inspect_code.lua");
script!(CREATE_CAMPAIGN, "create_campaign.lua");
with_rules!(RULES, "rules.lua");
with_num!(TRANSITION, "transition.lua");
with_num!(PATCH_CAMPAIGN, "patch_campaign.lua");
with_num!(BAN, "ban.lua");
script!(EXPIRE_CAMPAIGN, "expire_campaign.lua");
script!(RESERVE_CODES, "reserve_codes.lua");
with_num!(VOID_CLAIM, "void_claim.lua");
script!(SHARD_SYNC, "shard_sync.lua");
script!(SHARD_TAKE, "shard_take.lua");
script!(SHARD_GIVE, "shard_give.lua");
script!(SHARD_ALERT, "shard_alert.lua");

/// Every script, for preloading at start.
pub fn all() -> [&'static Script; 16] {
    [
        &CLAIM,
        &REDEEM,
        &ROLLBACK,
        &INSPECT_CODE,
        &CREATE_CAMPAIGN,
        &RULES,
        &BAN,
        &TRANSITION,
        &PATCH_CAMPAIGN,
        &EXPIRE_CAMPAIGN,
        &RESERVE_CODES,
        &VOID_CLAIM,
        &SHARD_SYNC,
        &SHARD_TAKE,
        &SHARD_GIVE,
        &SHARD_ALERT,
    ]
}
