//! The access-token attack matrix, and key rotation.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde_json::{json, Value};

use crate::helpers::{id_of, token_of, TestApp};

/// The active signing key, read from the identity database as an attacker with a stolen
/// database would: used to make tokens that are well signed but wrong in another way.
async fn signing_key(app: &TestApp) -> (String, Vec<u8>, String) {
    let (kid, private, public): (String, String, String) =
        sqlx::query_as("SELECT kid, private_pkcs8, public_key FROM signing_keys WHERE retired_at IS NULL")
            .fetch_one(app.app.identity.db().reader())
            .await
            .unwrap();
    (kid, STANDARD.decode(private).unwrap(), public)
}

fn claims(sub: &str, overrides: Value) -> Value {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let mut claims = json!({"iss": "mercato", "aud": "mercato", "sub": sub, "role": "admin", "iat": now, "exp": now + 600, "sid": "s"});
    for (key, value) in overrides.as_object().unwrap() {
        claims[key] = value.clone();
    }
    claims
}

fn sign_ed(kid: &str, der: &[u8], claims: &Value) -> String {
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_ed_der(der)).unwrap()
}

fn unsigned(header: Value, claims: &Value) -> String {
    format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_stale_tokens_are_refused() {
    let app = TestApp::spawn().await;
    let user = app.register("victim@example.com").await;
    let sub = id_of(&user);
    let (kid, der, public_x) = signing_key(&app).await;

    // The control: a token made the same way with correct claims is accepted, so the
    // refusals below are due to the one thing each case changes.
    let good = sign_ed(&kid, &der, &claims(&sub, json!({})));
    app.get("/api/v1/users/me", Some(&good)).await.expect(200);

    let past = time::OffsetDateTime::now_utc().unix_timestamp() - 3600;
    let tampered = {
        let mut token = token_of(&user);
        let last = token.pop().unwrap();
        token.push(if last == 'A' { 'B' } else { 'A' });
        token
    };
    let payload_swapped = {
        let real = token_of(&user);
        let parts: Vec<&str> = real.split('.').collect();
        let forged = URL_SAFE_NO_PAD.encode(claims(&sub, json!({"role": "admin"})).to_string());
        format!("{}.{}.{}", parts[0], forged, parts[2])
    };
    let hs256_with_public_key = {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(kid.clone());
        let mut tokens = Vec::new();
        for secret in [URL_SAFE_NO_PAD.decode(&public_x).unwrap(), public_x.as_bytes().to_vec()] {
            tokens.push(
                jsonwebtoken::encode(&header, &claims(&sub, json!({})), &EncodingKey::from_secret(&secret)).unwrap(),
            );
        }
        tokens
    };
    let stranger_key = {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
        let _ = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap().public_key();
        pkcs8.as_ref().to_vec()
    };

    let mut cases: Vec<(&str, String)> = vec![
        (
            "alg none",
            unsigned(
                json!({"alg": "none", "typ": "JWT", "kid": kid}),
                &claims(&sub, json!({})),
            ),
        ),
        (
            "alg none, no kid",
            unsigned(json!({"alg": "none", "typ": "JWT"}), &claims(&sub, json!({}))),
        ),
        (
            "expired",
            sign_ed(&kid, &der, &claims(&sub, json!({"exp": past, "iat": past - 900}))),
        ),
        (
            "wrong audience",
            sign_ed(&kid, &der, &claims(&sub, json!({"aud": "someone-else"}))),
        ),
        (
            "wrong issuer",
            sign_ed(&kid, &der, &claims(&sub, json!({"iss": "evil"}))),
        ),
        ("no expiry", sign_ed(&kid, &der, &claims(&sub, json!({"exp": null})))),
        ("tampered signature", tampered),
        ("payload swapped under a real signature", payload_swapped),
        (
            "unknown kid, unknown key",
            sign_ed("no-such-kid", &stranger_key, &claims(&sub, json!({}))),
        ),
        (
            "known kid, wrong key",
            sign_ed(&kid, &stranger_key, &claims(&sub, json!({}))),
        ),
        ("not a JWT", "garbage".to_owned()),
        ("empty", String::new()),
    ];
    for (i, token) in hs256_with_public_key.into_iter().enumerate() {
        cases.push(if i == 0 {
            ("HS256 keyed with the raw public key", token)
        } else {
            ("HS256 keyed with the encoded public key", token)
        });
    }
    for (case, token) in cases {
        let reply = app.get("/api/v1/users/me", Some(&token)).await;
        assert_eq!(
            reply.status.as_u16(),
            401,
            "{case}: expected 401, got {} {}",
            reply.status,
            reply.body
        );
        assert_eq!(reply.content_type(), "application/problem+json", "{case}");
    }
    app.get("/api/v1/users/me", None).await.expect_problem(401);
}

/// The key ids the JWKS publishes now.
async fn published_kids(app: &TestApp) -> Vec<String> {
    let jwks = app.get("/.well-known/jwks.json", None).await.expect(200);
    jwks.body["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_keeps_old_tokens_valid_and_signs_new_ones_with_the_new_key() {
    let app = TestApp::spawn().await;
    let old_token = app.customer_token("rot@example.com").await;
    let old_kid = jsonwebtoken::decode_header(&old_token).unwrap().kid.unwrap();

    let new_kid = app.app.identity.keys().rotate().await.unwrap();
    assert_ne!(old_kid, new_kid);
    let kids = published_kids(&app).await;
    assert!(
        kids.contains(&old_kid) && kids.contains(&new_kid),
        "both keys published: {kids:?}"
    );

    app.get("/api/v1/users/me", Some(&old_token)).await.expect(200);
    let new_token = token_of(
        &app.login("rot@example.com", crate::helpers::PASSWORD)
            .await
            .expect(200)
            .body,
    );
    assert_eq!(jsonwebtoken::decode_header(&new_token).unwrap().kid.unwrap(), new_kid);
    // The verifier has not seen the new kid yet: it fetches the JWKS again once.
    app.get("/api/v1/users/me", Some(&new_token)).await.expect(200);

    // After the access-token lifetime the retired key leaves the JWKS.
    app.clock.advance(std::time::Duration::from_secs(16 * 60 + 60));
    let kids = published_kids(&app).await;
    assert_eq!(kids, vec![new_kid]);
}
