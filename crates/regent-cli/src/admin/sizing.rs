//! How many counts a registration token needs (devices × instances), and
//! expiries given as a duration or a date.

use super::*;

/// How many auth tokens a registration token must allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Size {
    pub(super) devices: Option<u32>,
    pub(super) instances_per_device: u32,
    pub(super) count: u32,
}

impl Size {
    pub(super) fn new(
        devices: Option<u32>,
        instances_per_device: u32,
        count: Option<u32>,
    ) -> Result<Size, Error> {
        let size = match (devices, count) {
            (_, Some(count)) => Size {
                devices: None,
                instances_per_device: 1,
                count,
            },
            (Some(devices), None) => {
                let count = devices.checked_mul(instances_per_device).ok_or_else(|| {
                    Error::new(
                        ErrorCode::BadRequest,
                        format!("{devices} devices × {instances_per_device} instances does not fit a count"),
                    )
                })?;
                Size {
                    devices: Some(devices),
                    instances_per_device,
                    count,
                }
            }
            (None, None) => {
                return Err(Error::new(
                    ErrorCode::BadRequest,
                    "say how many auth tokens the registration token may create: --devices N [--instances-per-device M], or --count N",
                ));
            }
        };
        if size.count == 0 {
            return Err(Error::new(
                ErrorCode::BadRequest,
                "the count must be at least 1",
            ));
        }
        Ok(size)
    }

    pub(super) fn describe(&self) -> String {
        match self.devices {
            Some(devices) => format!(
                "{devices} device{} × {} instance{} per device",
                plural(devices),
                self.instances_per_device,
                plural(self.instances_per_device)
            ),
            None => "explicit count".to_owned(),
        }
    }

    pub(super) fn to_json(self) -> Value {
        json!({
            "devices": self.devices,
            "instancesPerDevice": self.instances_per_device,
            "count": self.count,
        })
    }
}

pub(super) fn plural(n: u32) -> &'static str {
    if n == 1 { "" } else { "s" }
}

pub(super) fn print_size(size: &Size, expiry: &str, json: bool) {
    if json {
        let mut out = size.to_json();
        out["expiryDate"] = json!(expiry);
        println!("{}", pretty(&out));
    } else {
        println!(
            "count {} ({}), expires {expiry}",
            size.count,
            size.describe()
        );
    }
}

/// `30d` / `12h` / `90m` from now, a date (end of that day, UTC) or RFC 3339.
pub(super) fn parse_expiry(text: &str, now: OffsetDateTime) -> Result<String, Error> {
    let text = text.trim();
    let bad = || {
        Error::new(
            ErrorCode::BadRequest,
            format!(
                "--expires {text:?}: use a duration such as 30d or 12h, a date such as 2026-12-31, or an RFC 3339 time"
            ),
        )
    };
    let relative = text
        .strip_suffix('d')
        .map(|n| (n, 86_400))
        .or_else(|| text.strip_suffix('h').map(|n| (n, 3_600)))
        .or_else(|| text.strip_suffix('m').map(|n| (n, 60)));
    if let Some((n, unit)) = relative
        && let Ok(n) = n.parse::<i64>()
    {
        if n <= 0 {
            return Err(bad());
        }
        let at = now + time::Duration::seconds(n.saturating_mul(unit));
        return at
            .replace_nanosecond(0)
            .map_err(|_| bad())?
            .format(&Rfc3339)
            .map_err(|_| bad());
    }
    if let Ok(at) = OffsetDateTime::parse(text, &Rfc3339) {
        return at.format(&Rfc3339).map_err(|_| bad());
    }
    let date_format = time::macros::format_description!("[year]-[month]-[day]");
    if let Ok(date) = time::Date::parse(text, &date_format) {
        let end = date.with_hms(23, 59, 59).map_err(|_| bad())?.assume_utc();
        return end.format(&Rfc3339).map_err(|_| bad());
    }
    Err(bad())
}
