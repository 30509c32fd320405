//! Reading the configuration file: owner and mode checked first, TOML errors
//! reported by line without quoting values.

use super::*;

impl Config {
    /// Reads (see [`read_checked`]: owner and mode first) and validates a
    /// configuration file.
    ///
    /// # Errors
    /// `CONFIG` naming the file, the line and the problem (unknown key, wrong
    /// type, missing required key with an example, a value out of range), or
    /// a file that others than root and the agent's uid may write.
    pub fn load(path: &Path) -> Result<Config> {
        let text = read_checked(path)?;
        Config::parse(&text, path)
    }

    /// Parses and validates configuration text; `origin` names it in errors.
    ///
    /// # Errors
    /// As [`Config::load`].
    pub fn parse(text: &str, origin: &Path) -> Result<Config> {
        let config: Config = toml::from_str(text).map_err(|e| {
            Error::new(
                ErrorCode::Config,
                format!(
                    "config file {}: {}",
                    origin.display(),
                    describe_toml_error(text, &e)
                ),
            )
        })?;
        config.validate().map_err(|problem| {
            Error::new(
                ErrorCode::Config,
                format!("config file {}: {problem}", origin.display()),
            )
        })?;
        Ok(config)
    }
}

/// Reads the configuration file after checking who may have written it: it
/// holds the allow lists, so a file that others can change hands them the
/// agent. On Unix the file (after symlinks) must belong to root or the
/// agent's uid and be writable by neither group nor others; the checks and
/// the read use one open file, so a swap in between changes nothing.
///
/// # Errors
/// `CONFIG` naming the file, what is wrong and the `chmod`/`chown` that fixes it.
pub fn read_checked(path: &Path) -> Result<String> {
    use std::io::Read as _;
    let cannot = |e: std::io::Error| {
        Error::new(
            ErrorCode::Config,
            format!("cannot read config file {}: {e}", path.display()),
        )
    };
    let mut file = std::fs::File::open(path).map_err(cannot)?;
    #[cfg(unix)]
    {
        let meta = file.metadata().map_err(cannot)?;
        check_file_owner_and_mode(path, &meta, crate::ipc::peer::current_uid())?;
    }
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(cannot)?;
    Ok(text)
}

#[cfg(unix)]
pub(super) fn check_file_owner_and_mode(
    path: &Path,
    meta: &std::fs::Metadata,
    own_uid: u32,
) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let shown = path.display();
    let owner = meta.uid();
    if owner != 0 && owner != own_uid {
        return Err(Error::new(
            ErrorCode::Config,
            format!(
                "config file {shown} belongs to uid {owner}, not to root or the agent's uid {own_uid}: that user could change the allow lists; \
                 fix: `chown root {shown}` (or `chown {own_uid}`)"
            ),
        ));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        let who = match (mode & 0o020 != 0, mode & 0o002 != 0) {
            (true, true) => "group- and world-writable",
            (true, false) => "group-writable",
            _ => "world-writable",
        };
        return Err(Error::new(
            ErrorCode::Config,
            format!(
                "config file {shown} is {who} (mode {mode:04o}): others could change the allow lists; fix: `chmod go-w {shown}`"
            ),
        ));
    }
    Ok(())
}

/// toml's messages already carry line, column and the offending key; prefix the
/// line number so the first thing a user reads is where to look.
pub(super) fn describe_toml_error(text: &str, e: &toml::de::Error) -> String {
    let detail = e.message().trim();
    match e.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!("line {line}: {detail}")
        }
        None => detail.to_owned(),
    }
}
