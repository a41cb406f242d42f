//! `portfw agent`: keep a policy file in force and serve metrics, until SIGTERM.
use std::{
    net::{SocketAddr, ToSocketAddrs as _},
    process::ExitCode,
};

use super::{AgentArgs, EXIT_OK};
use crate::agent;

pub fn run(args: AgentArgs) -> anyhow::Result<ExitCode> {
    agent::run(agent::Config {
        policy: args.policy,
        ifaces: args.ifaces,
        mode: args.mode.into(),
        metrics_listen: args.metrics_listen,
    })?;
    Ok(ExitCode::from(EXIT_OK))
}

/// `--metrics-listen`: `ADDR:PORT`, `[V6]:PORT`, `:PORT` (every IPv4 address, as Prometheus
/// exporters write it) or `HOST:PORT`.
pub fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    if let Some(port) = text.strip_prefix(':') {
        let port: u16 = port
            .parse()
            .map_err(|_| format!("`{port}` is not a port number"))?;
        return Ok(SocketAddr::from(([0, 0, 0, 0], port)));
    }
    text.to_socket_addrs()
        .map_err(|e| format!("expected ADDR:PORT, e.g. 127.0.0.1:9713 or :9713 ({e})"))?
        .next()
        .ok_or_else(|| format!("{text} resolves to no address"))
}

#[cfg(test)]
mod tests {
    use super::parse_listen;

    #[test]
    fn listen_addresses_take_the_usual_forms() {
        assert_eq!(
            parse_listen("127.0.0.1:9713").map(|a| a.to_string()),
            Ok("127.0.0.1:9713".into())
        );
        assert_eq!(
            parse_listen("[::1]:9713").map(|a| a.to_string()),
            Ok("[::1]:9713".into())
        );
        assert_eq!(
            parse_listen(":9713").map(|a| a.to_string()),
            Ok("0.0.0.0:9713".into())
        );
        assert!(parse_listen("localhost:9713").is_ok_and(|a| a.ip().is_loopback()));
        assert!(parse_listen("9713").is_err());
        assert!(parse_listen(":http").is_err());
    }
}
