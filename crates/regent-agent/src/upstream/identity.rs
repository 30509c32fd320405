//! Who is redeeming: the device facts an administrator sees in the server's
//! list of auth tokens (identifier, FQDN, MAC address, user).

use std::fs;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::text::sanitize;

/// Identity sent with a Sentinel redemption; `identifier` is the slot's stable id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceIdentity {
    /// The slot's stable id (device id + slot number), generated once and stored
    /// before the first redemption so a retry replays it.
    pub identifier: String,
    /// The host name (best effort; no DNS lookup).
    pub fqdn: String,
    /// The first non-loopback MAC address, or empty.
    pub mac_address: String,
    /// The user the agent runs as.
    pub system_user_name: String,
    /// Free reference ids the administrator may want to see.
    pub ref_id1: Option<String>,
    /// Second free reference id.
    pub ref_id2: Option<String>,
}

/// Longest value sent for any detected field.
const MAX_FIELD: usize = 255;

impl DeviceIdentity {
    /// Detects host name, MAC address and user name. Never fails: what cannot be
    /// found is left empty.
    pub fn detect(identifier: String) -> DeviceIdentity {
        DeviceIdentity {
            identifier,
            fqdn: detect_hostname(),
            mac_address: detect_mac(Path::new("/sys/class/net")),
            system_user_name: detect_user(),
            ref_id1: None,
            ref_id2: None,
        }
    }
}

fn detect_hostname() -> String {
    let from_files = ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|p| fs::read_to_string(p).ok())
        .map(|s| clean(&s))
        .find(|s| !s.is_empty());
    from_files
        .or_else(|| env_first(&["HOSTNAME", "COMPUTERNAME"]))
        .unwrap_or_default()
}

fn detect_user() -> String {
    env_first(&["USER", "LOGNAME", "USERNAME"])
        .or_else(user_from_passwd)
        .unwrap_or_default()
}

/// System services often run without `USER`: look the effective uid up in
/// `/etc/passwd` (Linux; nothing elsewhere).
fn user_from_passwd() -> Option<String> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let passwd = fs::read_to_string("/etc/passwd").ok()?;
    user_for_uid(&status, &passwd)
}

fn user_for_uid(proc_status: &str, passwd: &str) -> Option<String> {
    // "Uid:\treal\teffective\tsaved\tfs"
    let euid = proc_status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .nth(1)?;
    passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|fields| fields.len() > 2 && fields[2] == euid)
        .map(|fields| clean(fields[0]))
        .filter(|name| !name.is_empty())
}

fn env_first(names: &[&str]) -> Option<String> {
    names
        .iter()
        .filter_map(|n| std::env::var(n).ok())
        .map(|s| clean(&s))
        .find(|s| !s.is_empty())
}

/// The MAC of the first interface in name order, preferring physical ones
/// (those with a `device` link) so a container bridge coming and going does not
/// change what the administrator sees.
fn detect_mac(class_net: &Path) -> String {
    let Ok(entries) = fs::read_dir(class_net) else {
        return String::new();
    };
    let mut candidates: Vec<(bool, String, String)> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name == "lo" {
                return None;
            }
            let mac = fs::read_to_string(entry.path().join("address")).ok()?;
            let mac = mac.trim().to_ascii_lowercase();
            if !is_usable_mac(&mac) {
                return None;
            }
            let virtual_interface = !entry.path().join("device").exists();
            Some((virtual_interface, name, mac))
        })
        .collect();
    candidates.sort();
    candidates
        .into_iter()
        .next()
        .map(|(_, _, mac)| mac)
        .unwrap_or_default()
}

fn is_usable_mac(mac: &str) -> bool {
    let parts: Vec<&str> = mac.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
        && mac != "00:00:00:00:00:00"
}

fn clean(s: &str) -> String {
    sanitize(s, MAX_FIELD)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detect_never_fails_and_keeps_the_identifier() {
        let id = DeviceIdentity::detect("dev-1/slot-0".to_owned());
        assert_eq!(id.identifier, "dev-1/slot-0");
        assert!(id.fqdn.chars().count() <= MAX_FIELD + 1);
        assert!(id.mac_address.is_empty() || is_usable_mac(&id.mac_address));
        assert!(id.ref_id1.is_none() && id.ref_id2.is_none());
    }

    #[test]
    fn mac_detection_prefers_physical_interfaces_and_skips_loopback() {
        let dir = tempfile::tempdir().unwrap();
        let add = |name: &str, mac: &str, physical: bool| {
            let p = dir.path().join(name);
            fs::create_dir(&p).unwrap();
            fs::write(p.join("address"), format!("{mac}\n")).unwrap();
            if physical {
                fs::create_dir(p.join("device")).unwrap();
            }
        };
        add("lo", "00:00:00:00:00:00", false);
        add("docker0", "02:42:ac:11:00:01", false);
        add("eth1", "AA:BB:CC:DD:EE:02", true);
        add("eth0", "aa:bb:cc:dd:ee:01", true);
        add("tun0", "", false);
        assert_eq!(detect_mac(dir.path()), "aa:bb:cc:dd:ee:01");
        assert_eq!(detect_mac(&dir.path().join("missing")), "");
    }

    #[test]
    fn user_is_looked_up_by_effective_uid() {
        let status = "Name:\tregent\nUid:\t0\t998\t998\t998\nGid:\t0\t0\t0\t0\n";
        let passwd =
            "root:x:0:0:root:/root:/bin/sh\nregent:x:998:998::/var/lib/regent:/usr/sbin/nologin\n";
        assert_eq!(user_for_uid(status, passwd).as_deref(), Some("regent"));
        assert_eq!(user_for_uid("Uid:\t5\t5\t5\t5\n", passwd), None);
        assert_eq!(user_for_uid("", passwd), None);
    }

    #[test]
    fn mac_validation() {
        assert!(is_usable_mac("aa:bb:cc:dd:ee:ff"));
        assert!(!is_usable_mac("00:00:00:00:00:00"));
        assert!(!is_usable_mac(""));
        assert!(!is_usable_mac("aa:bb:cc:dd:ee"));
        assert!(!is_usable_mac("zz:bb:cc:dd:ee:ff"));
    }
}
