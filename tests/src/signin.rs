//! Named-user sign-in fixtures: an emulator with a user and a public
//! client, an oauth2 agent home pointed at it, and a refresh token got the
//! way a device would (for `regent enroll --refresh-token`).

use serde_json::Value;

use crate::http1::post_form;
use crate::{AgentHome, EmulatorProc};

/// The public client the emulator registers for sign-in.
pub const CLIENT: &str = "desktop";
/// The test user's password (user `alice`, e-mail alice@example.com).
pub const PASSWORD: &str = "wonderland";

/// An emulator with user alice and the public client [`CLIENT`]; device
/// sign-ins poll every second; access tokens live `lifespan` seconds.
pub fn emulator(lifespan: u64) -> EmulatorProc {
    let users = tempfile::NamedTempFile::new().expect("a users file");
    std::fs::write(
        users.path(),
        format!("# test users\nalice:{PASSWORD}:alice@example.com\n"),
    )
    .expect("write the users file");
    let path = users.path().to_str().expect("a UTF-8 path").to_owned();
    EmulatorProc::start_with(
        lifespan,
        &[
            "--users-file",
            &path,
            "--public-client",
            CLIENT,
            "--device-interval",
            "1",
        ],
    )
}

/// An agent home for the oauth2 profile: the emulator as issuer, the
/// public client, scope `openid profile`.
pub fn oauth2_home(emu: &EmulatorProc) -> AgentHome {
    let home = AgentHome::new(&emu.url, "");
    let config = std::fs::read_to_string(&home.config)
        .expect("the config")
        .replace(
            &format!("profile = \"sentinel\"\nurl = \"{}\"", emu.url),
            &format!(
                "profile = \"oauth2\"\nissuer = \"{}\"\nclient_id = \"{CLIENT}\"\nscope = \"openid profile\"",
                emu.url
            ),
        );
    std::fs::write(&home.config, config).expect("write the config");
    home
}

/// A refresh token of alice's, from the emulator's device flow (the
/// authorization, the person's approval, the poll).
pub fn refresh_token_of_alice(emu: &EmulatorProc) -> String {
    let start = post_form(
        &format!("{}/oauth/device_authorization", emu.url),
        &[],
        &[("client_id", CLIENT), ("scope", "openid profile")],
    );
    let start: Value = serde_json::from_str(&start.body).expect("a device authorization");
    let field = |name: &str| start[name].as_str().expect(name).to_owned();
    let approved = post_form(
        &format!("{}/oauth/device", emu.url),
        &[],
        &[
            ("user_code", &field("user_code")),
            ("username", "alice"),
            ("password", PASSWORD),
            ("action", "allow"),
        ],
    );
    assert_eq!(approved.status, 200, "{}", approved.body);
    let tokens = post_form(
        &format!("{}/oauth/token", emu.url),
        &[],
        &[
            ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
            ("client_id", CLIENT),
            ("device_code", &field("device_code")),
        ],
    );
    let tokens: Value = serde_json::from_str(&tokens.body).expect("tokens");
    tokens["refresh_token"]
        .as_str()
        .expect("a refresh token")
        .to_owned()
}
