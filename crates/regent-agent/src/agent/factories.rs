//! What [`Agent::open`](super::Agent::open) builds from the configuration:
//! the secret store, the upstream client, the retry delays.

use super::*;

pub(super) fn backon_delays(config: &Config) -> impl Iterator<Item = Duration> {
    use backon::BackoffBuilder;
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_secs(config.refresh.backoff_min))
        .with_max_delay(Duration::from_secs(config.refresh.backoff_max))
        .with_jitter()
        .without_max_times()
        .build()
}

pub(super) fn open_store(config: &Config) -> Result<SecretStore> {
    let timeout = Duration::from_secs(config.store.timeout);
    match config.store.kind {
        StoreKind::Keychain => SecretStore::keychain(&config.store.service, timeout),
        StoreKind::File => SecretStore::file(config.store_path()?, timeout),
    }
}

/// The upstream client, once the paths the agent will write are known to
/// be valid too ([`Agent::preflight`]).
pub(super) fn checked_upstream(config: &Config, latency: Arc<Histogram>) -> Result<Arc<Upstream>> {
    let upstream = open_upstream(config, latency)?;
    config.state_dir()?;
    if config.store.kind == StoreKind::File {
        config.store_path()?;
    }
    Ok(upstream)
}

pub(super) fn open_upstream(config: &Config, latency: Arc<Histogram>) -> Result<Arc<Upstream>> {
    let s = &config.server;
    let http = Http::new(HttpSettings {
        connect_timeout: Duration::from_secs(s.connect_timeout),
        request_timeout: Duration::from_secs(s.request_timeout),
        proxy: s.proxy_setting(),
        ca_file: s.ca_file.clone(),
        latency,
        ..HttpSettings::default()
    })?;
    let missing = |key: &str| {
        Error::new(
            ErrorCode::Config,
            format!("[server] {key} is required for this profile"),
        )
    };
    Ok(match s.profile {
        Profile::Sentinel => {
            let url = s.url.clone().ok_or_else(|| missing("url"))?;
            Arc::new(Sentinel::new(http, url)?)
        }
        Profile::OAuth2 => {
            let endpoint = match (&s.token_url, &s.issuer) {
                (Some(url), _) => OAuth2Endpoint::TokenUrl(url.clone()),
                (None, Some(issuer)) => OAuth2Endpoint::Issuer(issuer.clone()),
                (None, None) => return Err(missing("token_url")),
            };
            let client_id = s.client_id.clone().ok_or_else(|| missing("client_id"))?;
            Arc::new(OAuth2::new(http, endpoint, client_id, s.scope.clone())?)
        }
    })
}
