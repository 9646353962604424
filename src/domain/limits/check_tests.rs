//! Tests of the checks on each value: names, limits, windows, keys,
//! distinct, words, bans, campaign globs, lists, defaults and the shield.

use super::test_support::{assert_err, err, rule_with};
use super::*;

#[test]
fn rule_names_are_checked() {
    let named = |name: &str| {
        format!("[[rule]]\nkey = [\"ip\"]\nlimit = 1\nwindow = \"1s\"\nname = \"{name}\"\n")
    };
    for bad in ["", "has space", "ünïcode", "a/b", &"x".repeat(65)] {
        assert_err(&named(bad), 5, "rule name is 1 to 64 characters");
    }
    for reserved in RESERVED_RULE_NAMES {
        assert_err(&named(reserved), 5, "is reserved");
    }
    for good in ["a", "A.b-c_9", &"x".repeat(64)] {
        assert!(RuleSet::parse(&named(good)).is_ok(), "{good}");
    }
}

#[test]
fn limit_must_be_positive() {
    let text = "# rules\n\n[[rule]]\nname = \"r\"\nkey = [\"ip\"]\nwindow = \"1m\"\nlimit = 0\n";
    let e = err(text);
    assert_eq!(e.line, Some(7));
    assert_eq!(e.column, Some(9));
    assert_eq!(e.message, "limit must be at least 1");
    assert_eq!(e.render(), "line 7, column 9: limit must be at least 1");
    assert_err(
        &text.replace("limit = 0", "limit = -3"),
        7,
        "limit must be at least 1",
    );
}

#[test]
fn windows_are_a_number_and_a_unit() {
    let with_window =
        |w: &str| format!("[[rule]]\nname = \"r\"\nkey = [\"ip\"]\nlimit = 1\nwindow = \"{w}\"\n");
    for zero in ["0s", "0m", "00h"] {
        assert_err(&with_window(zero), 5, "window must be longer than zero");
    }
    let form = "window is a number and a unit s, m, h or d, e.g. \"1m\"";
    for bad in [
        "5x", "", "m", "1", "1.5m", "-1m", " 1m", "1 m", "1ms", "1M", "1€",
    ] {
        let e = err(&with_window(bad));
        assert_eq!(e.line, Some(5), "{bad}");
        assert_eq!(e.message, form, "{bad}");
    }
    for long in [
        "31d",
        "721h",
        "99999999999999999999999d",
        "18446744073709551615d",
    ] {
        assert_err(&with_window(long), 5, "window must be at most 30d");
    }
    for (ok, ms) in [
        ("1s", 1_000),
        ("90s", 90_000),
        ("5m", 300_000),
        ("2h", 7_200_000),
        ("30d", 30 * 86_400_000),
    ] {
        let set = RuleSet::parse(&with_window(ok)).unwrap();
        assert_eq!(set.rules[0].window_ms, ms, "{ok}");
    }
}

#[test]
fn keys_are_checked() {
    let keyed =
        |k: &str| format!("[[rule]]\nname = \"r\"\nlimit = 1\nwindow = \"1s\"\nkey = {k}\n");
    assert_err(&keyed("[]"), 5, "key needs at least one");
    assert_err(&keyed("[\"ip\", \"ip\"]"), 5, "`ip` is in the key twice");
    assert_err(
        &keyed("[\"ip\", \"email\"]"),
        5,
        "`email` is not a key part",
    );
    let e = err(&keyed("[\"ip\",\n  \"email\"]"));
    assert_eq!(e.line, Some(6), "the element's own line: {e:?}");

    let set = RuleSet::parse(&keyed(
        "[\"phone\", \"campaign\", \"device\", \"user\", \"ip\"]",
    ))
    .unwrap();
    let rule = &set.rules[0];
    assert_eq!(
        rule.key,
        [
            KeyPart::Phone,
            KeyPart::Campaign,
            KeyPart::Device,
            KeyPart::User,
            KeyPart::Ip
        ]
    );
    assert_eq!(
        rule.ban_kinds(),
        [BanKind::Phone, BanKind::Device, BanKind::Ip]
    );
}

#[test]
fn distinct_is_checked() {
    assert_err(
        &rule_with("distinct = \"campaign\""),
        6,
        "distinct is one of ip, phone, device or user",
    );
    assert_err(&rule_with("distinct = \"email\""), 6, "distinct is one of");
    assert_err(&rule_with("distinct = \"ip\""), 6, "is part of the key");
    assert_err(
        &rule_with("count = \"failures\"\ndistinct = \"phone\""),
        7,
        "distinct counts requests only",
    );
    let set = RuleSet::parse(&rule_with("count = \"requests\"\ndistinct = \"user\"")).unwrap();
    assert_eq!(set.rules[0].distinct, Some(KeyPart::User));
}

#[test]
fn words_are_checked() {
    assert_err(
        &rule_with("endpoint = \"claims\""),
        6,
        "endpoint is one of claim, redeem, validate or any",
    );
    assert_err(
        &rule_with("count = \"all\""),
        6,
        "count is one of requests, successes or failures",
    );
    assert_err(
        &rule_with("mode = \"dry-run\""),
        6,
        "mode is enforce or shadow",
    );
    let set = RuleSet::parse(&rule_with(
        "endpoint = \"validate\"\nmode = \"shadow\"\ncount = \"successes\"",
    ))
    .unwrap();
    let rule = &set.rules[0];
    assert_eq!(rule.endpoint, Endpoint::Validate);
    assert_eq!(rule.mode, Mode::Shadow);
    assert_eq!(rule.count, Count::Successes);
    let set = RuleSet::parse(&rule_with("")).unwrap();
    assert_eq!(set.rules[0].endpoint, Endpoint::Any);
    assert_eq!(set.rules[0].line, 1);
}

#[test]
fn bans_are_checked() {
    assert_err(
        &rule_with("ban = { after = 0, duration = \"1h\" }"),
        6,
        "ban after must be at least 1",
    );
    assert_err(
        &rule_with("ban = { factor = 0, duration = \"1h\" }"),
        6,
        "ban factor must be at least 1",
    );
    assert_err(
        &rule_with("ban = { factor = 4294967296, duration = \"1h\" }"),
        6,
        "ban factor must be at most",
    );
    assert_err(
        &rule_with("ban = { duration = \"0m\" }"),
        6,
        "ban duration must be longer than zero",
    );
    assert_err(
        &rule_with("ban = { duration = \"1 hour\" }"),
        6,
        "ban duration is a number and a unit",
    );
    assert_err(
        &rule_with("ban = { duration = \"1h\", max = \"30m\" }"),
        6,
        "ban max must be at least the ban duration",
    );
    assert_err(
        &rule_with("ban = { duration = \"1h\", max = \"x\" }"),
        6,
        "ban max is a number and a unit",
    );
    assert_err(
        &rule_with("ban = { duration = \"366d\" }"),
        6,
        "ban duration must be at most 365d",
    );
    assert_err(
        &rule_with("mode = \"shadow\"\nban = { duration = \"1h\" }"),
        7,
        "a shadow rule never bans",
    );
    let user_keyed = "[[rule]]\nname = \"r\"\nkey = [\"user\", \"campaign\"]\nlimit = 5\nwindow = \"1m\"\nban = { duration = \"1h\" }\n";
    assert_err(user_keyed, 6, "ban needs ip, phone or device in the key");

    // The table form reports the line of the offending value.
    let e = err(&rule_with("[rule.ban]\nduration = \"1h\"\nmax = \"1m\""));
    assert_eq!(e.line, Some(8), "{e:?}");

    let set = RuleSet::parse(&rule_with("ban = { duration = \"1h\", max = \"1h\" }")).unwrap();
    assert_eq!(set.rules[0].ban.as_ref().unwrap().max_ms, Some(3_600_000));
}

#[test]
fn campaign_globs_are_checked() {
    assert_err(
        &rule_with("campaign = \"double11-[\""),
        6,
        "is not a valid glob",
    );
    assert_err(
        &rule_with("campaign = \"Double11-*\""),
        6,
        "can never match",
    );
    assert_err(&rule_with("campaign = \"a.b\""), 6, "can never match");
    assert_err(&rule_with("campaign = \"\""), 6, "campaign glob is empty");
    let set = RuleSet::parse(&rule_with("campaign = \"{spring,summer}-??\"")).unwrap();
    let glob = set.rules[0].campaign.as_ref().unwrap();
    assert!(glob.is_match("spring-01"));
    assert!(!glob.is_match("autumn-01"));
    assert!(!glob.is_match("spring-001"));
}

#[test]
fn lists_are_checked() {
    assert_err(
        "[block]\nips = [\"10.0.0.0/8\",\n  \"300.1.1.1/8\"]\n",
        3,
        "`300.1.1.1/8` is not a CIDR",
    );
    assert_err("[allow]\nips = [\"10.0.0.0/33\"]\n", 2, "is not a CIDR");
    assert_err("[allow]\nips = [\"example.com\"]\n", 2, "is not a CIDR");
    for bad in [
        "8617012345678",
        "+",
        "+*",
        "+86 170*",
        "+86170**",
        "+8617*0",
        "+1234567890123456",
        "+86a",
    ] {
        let text = format!("[block]\n\nphones = [\"{bad}\"]\n");
        assert_err(&text, 3, "is not a phone pattern");
    }
    assert_err("[block]\ndevices = [\"emu[\"]\n", 2, "is not a valid glob");
    assert_err("[block]\ndevices = [\"\"]\n", 2, "device pattern is empty");
}

#[test]
fn defaults_are_checked() {
    assert_err(
        "[defaults]\nipv6_prefix = 31\n",
        2,
        "ipv6_prefix must be between 32 and 128",
    );
    assert_err(
        "[defaults]\nipv6_prefix = 129\n",
        2,
        "ipv6_prefix must be between 32 and 128",
    );
    assert_err(
        "[defaults]\nipv6_prefix = -64\n",
        2,
        "ipv6_prefix must be between 32 and 128",
    );
    assert_err(
        "[defaults]\ntrusted_proxies = [\"10.0.0.0/8\", \"localhost\"]\n",
        2,
        "`localhost` is not a CIDR",
    );
    let set = RuleSet::parse(
        "[defaults]\nipv6_prefix = 128\ntrusted_proxies = [\"::1\", \"10.1.2.3\"]\n",
    )
    .unwrap();
    assert_eq!(set.defaults.ipv6_prefix, Some(128));
    let proxies: Vec<String> = set
        .defaults
        .trusted_proxies
        .unwrap()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(proxies, ["::1/128", "10.1.2.3/32"]);
}

#[test]
fn the_shield_is_off_unless_both_numbers_are_positive() {
    let shield = |body: &str| RuleSet::parse(&format!("[shield]\n{body}\n")).map(|s| s.shield);
    assert_eq!(
        shield("per_second = 5\nburst = 10").unwrap(),
        Some(Shield {
            per_second: 5,
            burst: 10
        })
    );
    assert_eq!(shield("per_second = 5\nburst = 0").unwrap(), None);
    assert_eq!(shield("per_second = 0\nburst = 10").unwrap(), None);
    assert_eq!(shield("").unwrap(), None);
    assert_eq!(shield("burst = 0").unwrap(), None);
    assert_eq!(RuleSet::parse("").unwrap().shield, None);

    assert_err("[shield]\nburst = 10\n", 2, "burst but no per_second");
    assert_err("[shield]\nper_second = 10\n", 2, "per_second but no burst");
    assert_err(
        "[shield]\nper_second = -1\nburst = 10\n",
        2,
        "per_second must be 0 or more",
    );
    assert_err(
        "[shield]\nper_second = 1\nburst = 4294967296\n",
        3,
        "burst must be at most",
    );
}
