//! `portfw knock-key` (a new knock key file) and `portfw knock` (send a single-packet
//! knock to a host whose `portfw agent` opens the door).
use std::{
    net::{IpAddr, SocketAddr, ToSocketAddrs as _, UdpSocket},
    path::PathBuf,
    process::ExitCode,
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use clap::Args;
use portfw_common::SPA_DEFAULT_PORT;

use super::EXIT_OK;
use crate::{
    policy::escape,
    spa::{Key, Knock},
};

pub const KNOCK_KEY_EXAMPLES: &str = "\
Examples:
  portfw knock-key /etc/portfw/knock.key
  portfw knock-key --force /etc/portfw/knock.key     # a new key replaces the old one

The file holds 32 random bytes as 64 hex digits and a newline, mode 0600. Copy it to each
client that may knock (`portfw knock --key-file`), and name it in the door's
`spa: {port: 62201/udp, key-file: /etc/portfw/knock.key}`.

Exit status: 0 written; 1 the file exists (without --force) or could not be written.";

pub const KNOCK_EXAMPLES: &str = "\
Examples:
  portfw knock server.example.com --door spa --key-file ~/.config/portfw/knock.key
  portfw knock 2001:db8::10 --door spa --key-file knock.key --port 62201 && ssh 2001:db8::10

One UDP datagram: the time, a random nonce and the door's name, signed with HMAC-SHA256.
The server's `portfw agent` checks the signature, that the time is within 30 s of its own
clock, and that the nonce is new, then opens the door for the address the datagram came
from, for the door's `for:`. Nothing answers: a knock that opens nothing looks the same.

Exit status: 0 sent; 1 the key could not be read, the host not resolved, or sending failed.";

#[derive(Debug, Args)]
pub struct KnockKeyArgs {
    /// The key file to write.
    pub file: PathBuf,
    /// Replace FILE if it exists.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct KnockArgs {
    /// The host to knock on: an IPv4 or IPv6 address, or a name.
    pub host: String,
    /// The door to open, as its `name:` in the server's policy.
    #[arg(long, value_name = "NAME")]
    pub door: String,
    /// The door's key file, as `portfw knock-key` wrote it.
    #[arg(long, value_name = "FILE")]
    pub key_file: PathBuf,
    /// The door's UDP port (its `spa: port:`).
    #[arg(long, default_value_t = SPA_DEFAULT_PORT)]
    pub port: u16,
    /// Seconds added to this host's clock in the knock (tests of stale knocks).
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = 0,
        allow_negative_numbers = true,
        hide = true
    )]
    pub timestamp_offset: i64,
}

pub fn run_key(args: KnockKeyArgs) -> anyhow::Result<ExitCode> {
    let key = Key::generate()?;
    key.write_new(&args.file, args.force)?;
    println!(
        "wrote a new knock key to {} (mode 0600)",
        escape(&args.file.display().to_string())
    );
    Ok(ExitCode::from(EXIT_OK))
}

/// Where to send: HOST as an address, or its first address.
fn resolve(host: &str, port: u16) -> anyhow::Result<SocketAddr> {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    (bare, port)
        .to_socket_addrs()
        .with_context(|| format!("resolving {}", escape(host)))?
        .next()
        .with_context(|| format!("{} resolves to no address", escape(host)))
}

pub fn run(args: KnockArgs) -> anyhow::Result<ExitCode> {
    let key = Key::read(&args.key_file)?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("this host's clock is before 1970")?
        .as_secs();
    let timestamp = now.saturating_add_signed(args.timestamp_offset);
    let datagram = Knock::new(&args.door, timestamp)?.encode(&key)?;
    let to = resolve(&args.host, args.port)?;
    let local: SocketAddr = if to.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(local).context("opening a UDP socket")?;
    let sent = socket
        .send_to(&datagram, to)
        .with_context(|| format!("sending the knock to {to}"))?;
    if sent != datagram.len() {
        anyhow::bail!(
            "sending the knock to {to}: only {sent} of {} bytes went",
            datagram.len()
        );
    }
    println!("sent a knock for door {} to {to}", escape(&args.door));
    Ok(ExitCode::from(EXIT_OK))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_resolve_as_addresses_or_names() {
        assert_eq!(
            resolve("192.0.2.1", 62201).ok(),
            Some("192.0.2.1:62201".parse().expect("addr"))
        );
        assert_eq!(
            resolve("2001:db8::1", 1).ok(),
            Some("[2001:db8::1]:1".parse().expect("addr"))
        );
        assert_eq!(
            resolve("[2001:db8::1]", 1).ok(),
            Some("[2001:db8::1]:1".parse().expect("addr"))
        );
        assert!(resolve("localhost", 1).is_ok_and(|a| a.ip().is_loopback()));
    }

    #[test]
    fn a_knock_reaches_a_socket_and_verifies() {
        let dir = std::env::temp_dir().join(format!("portfw-knock-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let key_file = dir.join("k");
        run_key(KnockKeyArgs {
            file: key_file.clone(),
            force: false,
        })
        .expect("knock-key");
        let server = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let port = server.local_addr().expect("addr").port();
        run(KnockArgs {
            host: "127.0.0.1".into(),
            door: "spa".into(),
            key_file: key_file.clone(),
            port,
            timestamp_offset: -100,
        })
        .expect("knock");
        let mut buf = [0u8; 512];
        server
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .expect("timeout");
        let (len, _) = server.recv_from(&mut buf).expect("recv");
        let parsed = crate::spa::packet::parse(&buf[..len]).expect("parse");
        parsed
            .verify(&Key::read(&key_file).expect("key"))
            .expect("verify");
        assert_eq!(parsed.knock.door, b"spa");
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        assert!(now - 100 - parsed.knock.timestamp <= 2);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
