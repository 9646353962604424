//! The Lua scripts, embedded at compile time and loaded once per process.
//! `redis::Script` sends EVALSHA and, on `NOSCRIPT` (a fresh or restarted
//! Redis), loads the body and sends EVALSHA again, so no caller handles it.
//! A call with many arguments (a claim batch) is built straight into one
//! command instead ([`evalsha`], [`run`]): `ScriptInvocation` allocates
//! each argument on its own and copies it again into the command.
//!
//! The claim script also goes as a Redis function library ([`CLAIM_LIB`],
//! `FCALL`): Redis then sets up its text (the hash cache's and the rules
//! engine's ~40 functions) once, not on every call, and the rules' parsed
//! constants outlive a call (Redis's instructions and time a claim:
//! docs/benchmarks.md, "The claim script as a function library"). The same files
//! make both; the EVALSHA form stays for a server that refuses `FUNCTION`
//! (an ACL, a renamed command): [`run_claim`] falls back to it by itself.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicBool, Ordering};

use redis::aio::ConnectionLike;
use redis::{Cmd, FromRedisValue, RedisError, RedisResult, Script};

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

/// A script made into a Redis function library: its name and its one
/// function's both carry a hash of the text, so instances of two versions
/// of the service share a Redis without replacing each other's code.
#[derive(Debug)]
pub struct Library {
    name: String,
    function: String,
    text: String,
    /// The EVALSHA form, for a server without functions.
    script: &'static LazyLock<Script>,
}

/// Whether a store's server refused `FUNCTION` or `FCALL`: set once, the
/// store sends the script form from then on (each store keeps its own).
pub type Refused = AtomicBool;

/// How a library's text wraps a script's: the script's prelude (the hash
/// cache, the rules engine) is set up on the first call (the load itself
/// runs with no Lua library at hand), and its locals then serve every
/// call; each call starts with fresh per-call caches (`hc_reset`,
/// `rules_reset`) and its own `KEYS` / `ARGV`.
const LIB_HEAD: &str = "local run\nlocal function setup()\nlocal KEYS, ARGV\n";
const LIB_CALL: &str =
    "return function(keys, args)\nKEYS, ARGV = keys, args\nhc_reset()\nrules_reset()\n";
const LIB_TAIL: &str = "\nend\nend\n";

impl Library {
    fn new(prelude: &str, body: &str, script: &'static LazyLock<Script>) -> Self {
        let code = format!("{LIB_HEAD}{prelude}{LIB_CALL}{body}{LIB_TAIL}");
        let hash = Script::new(&code).get_hash()[..16].to_owned();
        let name = format!("stampede_{hash}");
        let function = format!("claim_{hash}");
        let text = format!(
            "#!lua name={name}\n{code}\
             redis.register_function('{function}', function(keys, args)\n\
             \x20 if not run then run = setup() end\n\
             \x20 return run(keys, args)\n\
             end)\n"
        );
        Self {
            name,
            function,
            text,
            script,
        }
    }

    /// Loads the library (`FUNCTION LOAD REPLACE`: the same text again is
    /// harmless; on a cluster, every master). A server that refuses it is
    /// remembered in `refused`: claims then go as the script.
    pub async fn load(&self, refused: &Refused, conn: &mut impl ConnectionLike) -> RedisResult<()> {
        let mut cmd = redis::cmd("FUNCTION");
        cmd.arg("LOAD").arg("REPLACE").arg(&self.text);
        match cmd.query_async::<redis::Value>(conn).await {
            Err(e) if is_refusal(&e) => {
                refuse(refused, &e);
                Ok(())
            }
            r => r.map(|_| ()),
        }
    }

    /// Deletes the libraries of other versions of the service
    /// (`stampede_*`), so deploys do not pile them up in Redis: an instance
    /// of another version still running loads its own again on its next
    /// call (`Function not found`). Best effort: returns how many went.
    pub async fn drop_others(&self, conn: &mut impl ConnectionLike) -> RedisResult<usize> {
        let mut list = redis::cmd("FUNCTION");
        list.arg("LIST").arg("LIBRARYNAME").arg("stampede_*");
        let libs: Vec<redis::Value> = list.query_async(conn).await?;
        let mut dropped = 0;
        for name in libs.iter().filter_map(library_name) {
            if !name.starts_with("stampede_") || name == self.name {
                continue;
            }
            let mut delete = redis::cmd("FUNCTION");
            delete.arg("DELETE").arg(&name);
            if delete.query_async::<redis::Value>(conn).await.is_ok() {
                dropped += 1;
            }
        }
        Ok(dropped)
    }

    /// A call of the library's function with `nkeys` keys (an EVALSHA of
    /// its script once the server `refused` functions): add the keys, then
    /// the arguments (the same in both forms), then send it with
    /// [`run_claim`].
    pub(super) fn call(&self, refused: &Refused, nkeys: usize) -> Cmd {
        if refused.load(Ordering::Relaxed) {
            return evalsha(self.script, nkeys);
        }
        let mut cmd = redis::cmd("FCALL");
        cmd.arg(&self.function).arg(nkeys);
        cmd
    }
}

/// The name of one library of a `FUNCTION LIST` reply.
fn library_name(lib: &redis::Value) -> Option<String> {
    let is_name = |k: &redis::Value| {
        redis::from_redis_value_ref::<String>(k).is_ok_and(|k| k == "library_name")
    };
    let value = match lib {
        redis::Value::Array(fields) => fields
            .chunks(2)
            .find(|kv| is_name(&kv[0]))
            .and_then(|kv| kv.get(1)),
        redis::Value::Map(pairs) => pairs.iter().find(|(k, _)| is_name(k)).map(|(_, v)| v),
        _ => None,
    }?;
    redis::from_redis_value_ref(value).ok()
}

fn refuse(refused: &Refused, e: &RedisError) {
    if !refused.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            error = %e,
            "the Redis server refuses functions; claims go as a script (EVALSHA), which costs Redis more a claim"
        );
    }
}

/// The server does not know `FUNCTION` / `FCALL` or this user may not use
/// them (an ACL, a renamed command): nothing ran.
fn is_refusal(e: &RedisError) -> bool {
    e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoPerm)
        || e.detail().is_some_and(|d| d.starts_with("unknown command"))
}

/// Sends a [`Library::call`]. On `Function not found` (a fresh or
/// restarted Redis, a new cluster node) loads the library and sends it
/// once more; on a server that refuses functions sends the same arguments
/// as an EVALSHA of the script. Neither error ran anything, so neither
/// resend can charge twice.
pub(super) async fn run_claim<T: FromRedisValue>(
    lib: &Library,
    refused: &Refused,
    cmd: &Cmd,
    conn: &mut impl ConnectionLike,
) -> RedisResult<T> {
    if cmd
        .args_iter()
        .next()
        .is_some_and(|a| matches!(a, redis::Arg::Simple(b"EVALSHA")))
    {
        return run(lib.script, cmd, conn).await;
    }
    let e = match cmd.query_async(conn).await {
        Err(e)
            if e.detail()
                .is_some_and(|d| d.starts_with("Function not found")) =>
        {
            lib.load(refused, conn).await?;
            if !refused.load(Ordering::Relaxed) {
                return cmd.query_async(conn).await;
            }
            e
        }
        Err(e) if is_refusal(&e) => {
            refuse(refused, &e);
            e
        }
        r => return r,
    };
    tracing::debug!(error = %e, "a claim call goes as the script");
    // EVALSHA <sha> in place of FCALL <function>; the key count, the keys
    // and the arguments follow as they are.
    let mut script = redis::cmd("EVALSHA");
    script.arg(lib.script.get_hash());
    for a in cmd.args_iter().skip(2) {
        if let redis::Arg::Simple(b) = a {
            script.arg(b);
        }
    }
    run(lib.script, &script, conn).await
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

/// `claim.lua` as a function library (see the module's docs).
pub static CLAIM_LIB: LazyLock<Library> = LazyLock::new(|| {
    Library::new(
        concat!(
            include_str!("../../lua/hcache.lua"),
            include_str!("../../lua/rules_core.lua"),
        ),
        include_str!("../../lua/claim.lua"),
        &CLAIM,
    )
});
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
