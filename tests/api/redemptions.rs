use futures_util::future::join_all;
use serde_json::{Value, json};

use crate::helpers::*;

async fn redeem(app: &TestApp, code: &str, order: &str, amount: i64) -> reqwest::Response {
    app.post(
        "/v1/redemptions",
        &json!({"code": code, "order_id": order, "order_amount": amount, "store_id": "sh-jingan-01"}),
    )
    .await
}

/// Every code, redeemed by two racing orders, is won by exactly one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_code_redeems_exactly_once_under_racing_orders() {
    let app = spawn_app().await;
    let id = app.create_campaign(json!({"stock": 60})).await;
    let codes = join_all((0..60).map(|i| {
        let app = &app;
        let id = &id;
        async move { app.claim_code(id, &phone(i), &format!("d{i}")).await }
    }))
    .await;
    let outcomes = join_all(codes.iter().flat_map(|code| {
        let app = &app;
        ["a", "b"].map(move |o| async move {
            let res = redeem(app, code, &format!("order-{code}-{o}"), 25_900).await;
            (
                code.clone(),
                res.status().as_u16(),
                res.json::<Value>().await.unwrap(),
            )
        })
    }))
    .await;
    for code in &codes {
        let mine: Vec<_> = outcomes.iter().filter(|(c, _, _)| c == code).collect();
        let wins = mine.iter().filter(|(_, s, _)| *s == 200).count();
        let losses = mine
            .iter()
            .filter(|(_, s, b)| *s == 409 && b["code"] == "already_redeemed")
            .count();
        assert_eq!((wins, losses), (1, 1), "{code}: {mine:?}");
    }
    assert_eq!(app.campaign(&id).await["redeemed"], 60);
    app.stop().await;
}

#[tokio::test]
async fn same_order_is_a_safe_replay_other_order_is_refused() {
    let app = spawn_app().await;
    let id = app.create_campaign(json!({})).await;
    let code = app.claim_code(&id, &phone(1), "d").await;
    let first = redeem(&app, &code, "o-1", 25_900).await;
    assert_eq!(first.status(), 200);
    let first: Value = first.json().await.unwrap();
    assert_eq!(first["discount"], 2000);
    assert_eq!(first["campaign_id"], id.as_str());
    assert_eq!(first["store_id"], "sh-jingan-01");
    app.clock.advance(time::Duration::seconds(30));
    let again = redeem(&app, &code, "o-1", 25_900).await;
    assert_eq!(again.status(), 200);
    assert_eq!(
        again.json::<Value>().await.unwrap(),
        first,
        "replay returns the first answer"
    );
    assert_problem(
        redeem(&app, &code, "o-2", 25_900).await,
        409,
        "already_redeemed",
    )
    .await;
    assert_eq!(app.campaign(&id).await["redeemed"], 1);
    app.stop().await;
}

#[tokio::test]
async fn minimum_amount_and_expiry_are_enforced() {
    let app = spawn_app().await;
    let id = app.create_campaign(json!({"valid_for_days": 7})).await;
    let code = app.claim_code(&id, &phone(1), "d").await;
    assert_problem(
        redeem(&app, &code, "o-1", 19_999).await,
        422,
        "not_eligible",
    )
    .await;
    let v = assert_problem(
        app.post("/v1/redemptions", &json!({"code": code, "order_id": "o-1"}))
            .await,
        422,
        "invalid_request",
    )
    .await;
    assert_eq!(v["errors"][0]["field"], "order_amount");
    app.clock.advance(time::Duration::days(7));
    assert_problem(
        redeem(&app, &code, "o-1", 30_000).await,
        409,
        "code_expired",
    )
    .await;
    assert_eq!(app.campaign(&id).await["redeemed"], 0);
    app.stop().await;
}

/// Flipping any one character of a valid code is refused before Redis is
/// asked (404 invalid_code), by redeem and validate alike.
#[tokio::test]
async fn forged_and_mistyped_codes_are_refused() {
    let app = spawn_app().await;
    let id = app.create_campaign(json!({})).await;
    let code = app.claim_code(&id, &phone(1), "d").await;
    let alphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    for pos in 0..code.len() {
        let mut b = code.clone().into_bytes();
        let cur = alphabet.find(b[pos] as char).unwrap();
        b[pos] = alphabet.as_bytes()[(cur + 1 + pos) % 62];
        let forged = String::from_utf8(b).unwrap();
        assert_problem(
            redeem(&app, &forged, "o-1", 30_000).await,
            404,
            "invalid_code",
        )
        .await;
    }
    for junk in ["", "short", "!!!!!!!!!!!!!!!!!!", &format!("{code}x")] {
        assert_problem(redeem(&app, junk, "o-1", 30_000).await, 404, "invalid_code").await;
    }
    let v: Value = app
        .post(
            "/v1/codes/validate",
            &json!({"code": &code[..17], "order_amount": 30000}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["valid"], false);
    assert_eq!(v["code"], "invalid_code");
    // The real one still works.
    assert_eq!(redeem(&app, &code, "o-1", 30_000).await.status(), 200);
    app.stop().await;
}

#[tokio::test]
async fn rollback_makes_the_code_usable_again() {
    let app = spawn_app().await;
    let id = app.create_campaign(json!({})).await;
    let code = app.claim_code(&id, &phone(1), "d").await;
    assert_eq!(redeem(&app, &code, "o-1", 30_000).await.status(), 200);
    let other = app
        .post(
            "/v1/redemptions/rollback",
            &json!({"code": code, "order_id": "o-9"}),
        )
        .await;
    assert_problem(other, 409, "already_redeemed").await;
    let res = app
        .post(
            "/v1/redemptions/rollback",
            &json!({"code": code, "order_id": "o-1"}),
        )
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.json::<Value>().await.unwrap()["rolled_back"], true);
    let again = app
        .post(
            "/v1/redemptions/rollback",
            &json!({"code": code, "order_id": "o-1"}),
        )
        .await;
    assert_eq!(again.json::<Value>().await.unwrap()["rolled_back"], false);
    assert_eq!(app.campaign(&id).await["redeemed"], 0);
    assert_eq!(redeem(&app, &code, "o-2", 30_000).await.status(), 200);
    assert_eq!(app.campaign(&id).await["redeemed"], 1);
    app.stop().await;
}

#[tokio::test]
async fn validate_tells_without_charging() {
    let app = spawn_app().await;
    let id = app
        .create_campaign(
            json!({"coupon": {"kind": "percent_off", "percent_off": 10, "max_discount": 1500}}),
        )
        .await;
    let code = app.claim_code(&id, &phone(1), "d").await;
    let check = |amount: i64| {
        let app = &app;
        let code = code.clone();
        async move {
            app.post(
                "/v1/codes/validate",
                &json!({"code": code, "order_amount": amount}),
            )
            .await
            .json::<Value>()
            .await
            .unwrap()
        }
    };
    let v = check(9_900).await;
    assert_eq!(
        (v["valid"].as_bool(), v["discount"].as_i64()),
        (Some(true), Some(990))
    );
    assert_eq!(check(50_000).await["discount"], 1500);
    assert_eq!(app.campaign(&id).await["redeemed"], 0);
    assert_eq!(redeem(&app, &code, "o-1", 9_900).await.status(), 200);
    let v = check(9_900).await;
    assert_eq!(
        (v["valid"].as_bool(), v["code"].as_str()),
        (Some(false), Some("already_redeemed"))
    );
    app.stop().await;
}
