//! `regent login` and `regent logout`: a user signs in with the license
//! server's identity provider, and the agent keeps that user's tokens fresh.
//!
//! The browser flow (RFC 8252): regent listens on `127.0.0.1` (an ephemeral
//! port), opens the provider's authorization page with `state` and a PKCE
//! S256 challenge (both from the OS-seeded CSPRNG), takes exactly one
//! redirect whose `state` matches, and relays its code and the verifier to
//! the agent, which exchanges them. The device flow (RFC 8628): the agent
//! asks for a device code, regent shows the page and the code, and relays
//! one poll at a time at the server's interval.

use std::io::Read as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use clap::Args;
use rand::RngCore as _;
use regent_client::{
    BrowserLogin, Client, ClientOptions, DeviceLogin, ExposeSecret as _, LoggedIn, LoginPoll,
    SecretString,
};
use regent_proto::ErrorCode;
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use url::Url;

use crate::failure::internal;
use regent_client::Error;

/// Longest redirect request read from the browser.
const MAX_REDIRECT_REQUEST: usize = 16 * 1024;
/// How long one browser connection may take to send its request.
const REQUEST_READ_LIMIT: Duration = Duration::from_secs(10);

/// A confidential client's secret: never an argument.
#[derive(Debug, Args)]
pub struct ClientSecretArgs {
    /// A confidential client: read its secret from this file (public
    /// clients, the norm for desktop sign-in, have none).
    #[arg(long, value_name = "PATH", conflicts_with = "client_secret_env")]
    pub client_secret_file: Option<PathBuf>,
    /// A confidential client: read its secret from this environment variable.
    #[arg(long, value_name = "VAR")]
    pub client_secret_env: Option<String>,
}

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// Sign in on another device's browser (RFC 8628): regent shows a page
    /// and a code, and waits while you approve it there.
    #[arg(long)]
    pub device: bool,
    /// Replace a working device enrollment with this user's sign-in.
    #[arg(long)]
    pub force: bool,
    /// Give up waiting for the browser after this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 300,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub timeout: u64,
    /// Only print the sign-in URL; do not start a browser.
    #[arg(long, conflicts_with = "device")]
    pub no_browser: bool,
    #[command(flatten)]
    pub client_secret: ClientSecretArgs,
    /// A confidential client: read its secret from stdin.
    #[arg(long, conflicts_with_all = ["client_secret_file", "client_secret_env"])]
    pub client_secret_stdin: bool,
}

/// Reads a confidential client's secret from where the arguments say;
/// `None` for a public client.
pub fn read_client_secret(
    args: &ClientSecretArgs,
    stdin: bool,
) -> Result<Option<SecretString>, Error> {
    let value = if let Some(path) = &args.client_secret_file {
        std::fs::read_to_string(path).map_err(|e| {
            internal(
                &format!("cannot read the client secret from {}", path.display()),
                e,
            )
        })?
    } else if let Some(var) = &args.client_secret_env {
        std::env::var(var).map_err(|_| {
            Error::new(
                ErrorCode::BadRequest,
                format!("environment variable {var} (--client-secret-env) is not set"),
            )
        })?
    } else if stdin {
        let mut s = String::new();
        std::io::stdin()
            .lock()
            .read_to_string(&mut s)
            .map_err(|e| internal("cannot read the client secret from stdin", e))?;
        s
    } else {
        return Ok(None);
    };
    let mut value = zeroize::Zeroizing::new(value);
    let trimmed = value.trim().to_owned();
    zeroize::Zeroize::zeroize(&mut *value);
    if trimmed.is_empty() {
        return Err(Error::new(
            ErrorCode::BadRequest,
            "the client secret is empty; check --client-secret-file / --client-secret-env / --client-secret-stdin",
        ));
    }
    Ok(Some(SecretString::from(trimmed)))
}

async fn connect(socket: Option<PathBuf>) -> Result<Client, Error> {
    let mut options = ClientOptions::new("regent-cli");
    if let Some(socket) = socket {
        options = options.socket(socket);
    }
    Client::connect(options).await
}

/// 32 bytes from the OS-seeded CSPRNG, base64url: a PKCE verifier (43
/// characters, RFC 7636 §4.1) or a `state`.
fn random_value() -> SecretString {
    let mut bytes = zeroize::Zeroizing::new([0u8; 32]);
    rand::rng().fill_bytes(&mut *bytes);
    SecretString::from(URL_SAFE_NO_PAD.encode(*bytes))
}

fn challenge(verifier: &SecretString) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.expose_secret().as_bytes()))
}

/// `regent login`.
pub async fn login(args: LoginArgs, socket: Option<PathBuf>) -> Result<(), Error> {
    let client_secret = read_client_secret(&args.client_secret, args.client_secret_stdin)?;
    let client = connect(socket).await?;
    let done = if args.device {
        device_login(&client, client_secret.as_ref(), args.force).await?
    } else {
        let timeout = Duration::from_secs(args.timeout);
        let no_browser = args.no_browser;
        let mut browser = None;
        let done = browser_login(
            &client,
            client_secret.as_ref(),
            args.force,
            timeout,
            |url| {
                browser = if no_browser { None } else { open_browser(url) };
                eprintln!(
                    "regent: {} sign in at:\n\n    {url}\n\nWaiting for the browser (up to {}s)…",
                    if browser.is_some() {
                        "a browser was opened; if it did not show the page,"
                    } else {
                        "open this page in a browser (on this machine) to"
                    },
                    timeout.as_secs()
                );
            },
        )
        .await;
        if let Some(mut child) = browser {
            // Reap an opener that has exited; a browser still running is left alone.
            let _ = child.try_wait();
        }
        done?
    };
    let valid = done
        .expires_at
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    match &done.user {
        Some(user) => println!(
            "signed in as {user}; access token valid for {}s",
            valid.as_secs()
        ),
        None => println!(
            "signed in (the provider did not say who); access token valid for {}s",
            valid.as_secs()
        ),
    }
    if let Some(scope) = &done.scope {
        println!("granted scope: {scope}");
    }
    Ok(())
}

/// Starts the browser: `$BROWSER` (its words, then the URL) when set, else
/// the desktop's opener. `None` when none could start; the URL is printed
/// either way.
fn open_browser(url: &str) -> Option<Child> {
    let mut command = match std::env::var("BROWSER") {
        Ok(browser) if !browser.trim().is_empty() => {
            let mut words = browser.split_whitespace();
            let mut command = Command::new(words.next()?);
            command.args(words);
            command
        }
        _ if cfg!(target_os = "macos") => Command::new("open"),
        // Not `cmd /C start`: cmd would read every `&` of the query as a
        // command separator. The URL handler takes the URL as it is.
        _ if cfg!(windows) => {
            let mut command = Command::new("rundll32");
            command.arg("url.dll,FileProtocolHandler");
            command
        }
        _ => Command::new("xdg-open"),
    };
    command
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()
}

/// The browser sign-in: asks the agent where the browser goes, listens on
/// loopback, hands the authorization URL to `open` (which starts a browser,
/// or a stand-in, and tells the person), waits up to `timeout` for the one
/// redirect with the right `state`, and has the agent exchange its code.
pub(crate) async fn browser_login(
    client: &Client,
    client_secret: Option<&SecretString>,
    force: bool,
    timeout: Duration,
    open: impl FnOnce(&str),
) -> Result<LoggedIn, Error> {
    let BrowserLogin {
        authorization_endpoint,
        client_id,
        scope,
    } = client.login_browser().await?;
    // RFC 8252 §7.3 and §8.3: loopback IP literal, ephemeral port, never a
    // name that could resolve elsewhere, never an external interface.
    let listener = TcpListener::bind(("127.0.0.1", 0))
        .await
        .map_err(|e| internal("cannot listen on 127.0.0.1 for the sign-in redirect", e))?;
    let port = listener
        .local_addr()
        .map_err(|e| internal("cannot read the redirect listener's address", e))?
        .port();
    let redirect_uri = format!("http://127.0.0.1:{port}/");
    let verifier = random_value();
    let state = random_value();
    let mut url = Url::parse(&authorization_endpoint).map_err(|e| {
        Error::new(
            ErrorCode::ServerError,
            format!("the agent named an authorization endpoint that is not a URL ({e})"),
        )
    })?;
    {
        let mut query = url.query_pairs_mut();
        query
            .append_pair("response_type", "code")
            .append_pair("client_id", &client_id)
            .append_pair("redirect_uri", &redirect_uri);
        if let Some(scope) = &scope {
            query.append_pair("scope", scope);
        }
        query
            .append_pair("state", state.expose_secret())
            .append_pair("code_challenge", &challenge(&verifier))
            .append_pair("code_challenge_method", "S256");
    }
    open(url.as_str());
    let code = tokio::time::timeout(timeout, wait_for_redirect(&listener, &state))
        .await
        .map_err(|_| {
            Error::new(
                ErrorCode::Timeout,
                format!(
                    "no sign-in arrived within {}s; run `regent login` again (or --timeout SECS for longer, --device to sign in from another device)",
                    timeout.as_secs()
                ),
            )
        })??;
    // Closed after one valid redirect.
    drop(listener);
    client
        .login_with_code(&code, &verifier, &redirect_uri, client_secret, force)
        .await
}

/// What one browser request to the loopback listener carried.
enum Redirect {
    /// The code, with the right `state`.
    Code(SecretString),
    /// The provider's refusal, with the right `state`.
    Refused { error: String, description: String },
    /// Anything else (a wrong `state`, a stray request): answered, ignored.
    Ignored,
}

/// Most browser connections read at once (each for at most
/// [`REQUEST_READ_LIMIT`]); past it a new connection is closed unanswered.
const MAX_CONNECTIONS: usize = 256;

/// Serves the loopback listener until one redirect with the right `state`
/// arrives; a wrong `state` is refused and the wait goes on. Each
/// connection is read on a task of its own, so one that sends nothing (a
/// browser's preconnect, or a local process stalling) delays no other.
async fn wait_for_redirect(
    listener: &TcpListener,
    state: &SecretString,
) -> Result<SecretString, Error> {
    let (found, mut outcomes) = tokio::sync::mpsc::channel::<Redirect>(MAX_CONNECTIONS);
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    // Out of descriptors, say, while stray connections are
                    // read: keep waiting for the browser.
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                while connections.try_join_next().is_some() {}
                if connections.len() >= MAX_CONNECTIONS {
                    continue;
                }
                let (found, state) = (found.clone(), state.clone());
                connections.spawn(async move {
                    if let Some(outcome) = serve_connection(stream, &state).await {
                        let _ = found.send(outcome).await;
                    }
                });
            }
            Some(outcome) = outcomes.recv() => match outcome {
                Redirect::Code(code) => return Ok(code),
                Redirect::Refused { error, description } => {
                    let said = if description.is_empty() {
                        error
                    } else {
                        format!("{error}: {description}")
                    };
                    return Err(Error::new(
                        ErrorCode::SignInFailed,
                        format!("the provider did not sign you in ({said}); run `regent login` again"),
                    ));
                }
                Redirect::Ignored => {}
            },
        }
    }
}

/// Reads and answers one browser connection; the code or refusal it
/// carried, when its `state` is the sign-in's.
async fn serve_connection(mut stream: TcpStream, state: &SecretString) -> Option<Redirect> {
    let Ok(Some(target)) = tokio::time::timeout(REQUEST_READ_LIMIT, read_target(&mut stream)).await
    else {
        respond(
            &mut stream,
            400,
            "Bad request",
            "regent could not read this request.",
        )
        .await;
        return None;
    };
    match classify(&target, state) {
        Redirect::Code(code) => {
            respond(
                &mut stream,
                200,
                "Signed in",
                "regent received the sign-in. You may close this window and return to the terminal.",
            )
            .await;
            Some(Redirect::Code(code))
        }
        refused @ Redirect::Refused { .. } => {
            respond(
                &mut stream,
                200,
                "Sign-in not completed",
                "The provider did not complete the sign-in. The terminal says why; you may close this window.",
            )
            .await;
            Some(refused)
        }
        Redirect::Ignored => {
            respond(
                &mut stream,
                400,
                "Not this sign-in",
                "This request does not belong to the sign-in regent is waiting for (its state does not match), so it was ignored.",
            )
            .await;
            eprintln!(
                "regent: ignored a request to the sign-in listener that does not match this sign-in (wrong or missing state); still waiting"
            );
            None
        }
    }
}

/// The request target of an HTTP/1.1 `GET`, read up to the end of the head.
async fn read_target(stream: &mut TcpStream) -> Option<String> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 2048];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await.ok()?;
        if n == 0 || head.len() + n > MAX_REDIRECT_REQUEST {
            return None;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = head.split(|&b| b == b'\r').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split(' ');
    match (parts.next(), parts.next()) {
        (Some("GET"), Some(target)) => Some(target.to_owned()),
        _ => None,
    }
}

fn classify(target: &str, state: &SecretString) -> Redirect {
    let Ok(url) = Url::parse(&format!("http://127.0.0.1{target}")) else {
        return Redirect::Ignored;
    };
    if url.path() != "/" {
        return Redirect::Ignored;
    }
    let find = |name: &str| {
        url.query_pairs()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    };
    let state_ok = find("state").is_some_and(|s| {
        let (a, b) = (s.as_bytes(), state.expose_secret().as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    });
    if !state_ok {
        return Redirect::Ignored;
    }
    if let Some(code) = find("code").filter(|c| !c.is_empty()) {
        return Redirect::Code(SecretString::from(code));
    }
    let clean = |s: String| -> String { s.chars().filter(|c| !c.is_control()).take(300).collect() };
    Redirect::Refused {
        error: clean(find("error").unwrap_or_else(|| "no code".to_owned())),
        description: clean(find("error_description").unwrap_or_default()),
    }
}

async fn respond(stream: &mut TcpStream, status: u16, title: &str, message: &str) {
    let reason = if status == 200 { "OK" } else { "Bad Request" };
    let body = format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title></head>\
         <body><h1>{title}</h1><p>{message}</p></body></html>\n"
    );
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/html; charset=utf-8\r\n\
         Content-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    // The browser may have gone; the sign-in does not depend on this page.
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

async fn device_login(
    client: &Client,
    client_secret: Option<&SecretString>,
    force: bool,
) -> Result<LoggedIn, Error> {
    let device: DeviceLogin = client.login_device(client_secret).await?;
    println!(
        "To sign in, open {} and enter the code {}",
        device.verification_uri, device.user_code
    );
    if let Some(complete) = &device.verification_uri_complete {
        println!("(or open {complete}, which has the code filled in)");
    }
    println!(
        "Waiting for the sign-in to be approved (the code expires in {}s)…",
        device.expires_in.as_secs()
    );
    let deadline = Instant::now()
        .checked_add(device.expires_in)
        .unwrap_or_else(Instant::now);
    let mut interval = device.interval;
    loop {
        tokio::time::sleep(interval).await;
        if Instant::now() >= deadline {
            return Err(Error::new(
                ErrorCode::SignInFailed,
                "the device code expired before the sign-in was approved; run `regent login --device` again",
            ));
        }
        match client
            .poll_device_login(&device, client_secret, force)
            .await
        {
            Ok(LoginPoll::LoggedIn(done)) => return Ok(done),
            Ok(LoginPoll::Pending { slow_down: false }) => {}
            Ok(LoginPoll::Pending { slow_down: true }) => {
                interval = interval.saturating_add(Duration::from_secs(5));
                eprintln!(
                    "regent: the server asked to poll less often; now every {}s",
                    interval.as_secs()
                );
            }
            // A passing failure (the server unreachable, rate limiting) is
            // retried at the interval until the code expires.
            Err(e) if e.code.is_retryable() => {
                eprintln!("regent: polling failed ({}); retrying", e.message);
            }
            Err(e) => return Err(e),
        }
    }
}

/// `regent logout`.
pub async fn logout(socket: Option<PathBuf>) -> Result<(), Error> {
    let client = connect(socket).await?;
    if client.logout().await? {
        println!("signed out: the server revoked the sign-in and its secrets are deleted here");
    } else {
        println!(
            "signed out: the secrets are deleted here (the server offers no revocation, or could not be reached; the refresh token lapses when it expires)"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_values_are_random_and_well_formed() {
        let a = random_value();
        let b = random_value();
        assert_ne!(a.expose_secret(), b.expose_secret());
        assert_eq!(a.expose_secret().len(), 43);
        // RFC 7636 Appendix B.
        let rfc = SecretString::from("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk".to_owned());
        assert_eq!(
            challenge(&rfc),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn only_the_right_state_gives_a_code() {
        let state = SecretString::from("s3".to_owned());
        assert!(
            matches!(classify("/?code=abc&state=s3", &state), Redirect::Code(c) if c.expose_secret() == "abc")
        );
        assert!(matches!(
            classify("/?code=abc&state=s4", &state),
            Redirect::Ignored
        ));
        assert!(matches!(classify("/?code=abc", &state), Redirect::Ignored));
        assert!(matches!(
            classify("/favicon.ico?state=s3&code=x", &state),
            Redirect::Ignored
        ));
        match classify(
            "/?error=access_denied&error_description=no%1b[2J&state=s3",
            &state,
        ) {
            Redirect::Refused { error, description } => {
                assert_eq!(error, "access_denied");
                assert!(!description.contains('\u{1b}'));
            }
            _ => panic!("a refusal with the right state ends the sign-in"),
        }
    }
}
