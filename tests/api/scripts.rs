//! The Lua helpers every script shares, called by hand on a fresh
//! `redis-server` (single node).

#[tokio::test]
async fn counters_are_read_as_hincrby_reads_them() {
    crate::single_node_only!("calls the script by hand on one node");
    // lua/num.lua: the scripts that increment a counter check it first
    // with `counter`, which must accept nothing HINCRBY refuses.
    let redis = crate::helpers::RedisServer::start();
    let mut conn = redis.conn();
    let inputs = [
        "0",
        "42",
        "-7",
        "1.5",
        " 2",
        "2 ",
        "+3",
        "0x10",
        "1e3",
        "nan",
        "inf",
        "",
        "-",
        "123456789012345678",
        "1234567890123456789",
    ];
    let script = concat!(
        include_str!("../../lua/num.lua"),
        "local out = {} for i, v in ipairs(ARGV) do out[i] = counter(v) and 'ok' or 'nil' end return out"
    );
    let read: Vec<String> = redis::cmd("EVAL")
        .arg(script)
        .arg(0)
        .arg(&inputs)
        .query(&mut conn)
        .unwrap();
    let accepted: Vec<&str> = inputs
        .iter()
        .zip(&read)
        .filter(|(_, r)| *r == "ok")
        .map(|(i, _)| *i)
        .collect();
    assert_eq!(accepted, ["0", "42", "-7", "123456789012345678"]);
    for v in accepted {
        let _: () = redis::cmd("HSET")
            .arg("h")
            .arg("f")
            .arg(v)
            .query(&mut conn)
            .unwrap();
        let r: redis::RedisResult<i64> = redis::cmd("HINCRBY")
            .arg("h")
            .arg("f")
            .arg(1)
            .query(&mut conn);
        assert!(r.is_ok(), "HINCRBY refuses {v:?}: {r:?}");
    }
}
