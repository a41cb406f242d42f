//! `portfw block` and `portfw unblock`: the block table by hand, as fail2ban's actions would
//! use it.
use std::{process::ExitCode, time::Duration};

use clap::Args;

use super::EXIT_OK;
use crate::{
    loader,
    policy::{Cidr, format_duration, parse_duration},
};

pub const BLOCK_EXAMPLES: &str = "\
Examples:
  portfw block 198.51.100.7 --for 1h
  portfw block 203.0.113.0/24          # until `portfw unblock 203.0.113.0/24`
  portfw block 2001:db8:1:2::9 --for 10m   # IPv6 sources are blocked by their /64
  nsenter --net=/run/netns/web portfw block 198.51.100.7

Every packet from a blocked source is dropped, allowed ports too, counted as drop_blocked.
IPv4 addresses and IPv6 /64s (up to 131072) go into a hash, other prefixes (up to 16384)
into a prefix table. `portfw status` lists the blocks with their expiry.

Exit status: 0 blocked; 1 it could not be (no filter here, or the table is full); 2 a
malformed address or duration.";

pub const UNBLOCK_EXAMPLES: &str = "\
Examples:
  portfw unblock 198.51.100.7
  portfw unblock 203.0.113.0/24

Lifts a block, whether `portfw block` or the scan guard made it, and forgets the source's
scan count. Unblocking what is not blocked changes nothing.

Exit status: 0 unblocked, or nothing to unblock; 1 no filter here; 2 a malformed address.";

#[derive(Debug, Args)]
pub struct BlockArgs {
    /// The source to block: an address, or a prefix as ADDR/LEN. An IPv6 address (or a
    /// prefix of /64 or longer) is blocked as its /64, as the scan guard blocks it.
    #[arg(value_name = "ADDR[/LEN]", value_parser = parse_address)]
    pub address: Cidr,
    /// How long the block lasts (`90s`, `10m`, `6h`, `1d`); without it, until
    /// `portfw unblock`.
    #[arg(long = "for", value_name = "DURATION", value_parser = parse_for)]
    pub duration: Option<Duration>,
}

#[derive(Debug, Args)]
pub struct UnblockArgs {
    /// The source or prefix to unblock, as it was blocked.
    #[arg(value_name = "ADDR[/LEN]", value_parser = parse_address)]
    pub address: Cidr,
}

fn parse_address(text: &str) -> Result<Cidr, String> {
    let (cidr, host_bits) = Cidr::parse_noting_host_bits(text).map_err(|e| e.to_string())?;
    if cidr.len == 0 {
        return Err(format!(
            "{text} is every source; refusing to block them all"
        ));
    }
    if host_bits {
        return Err(format!(
            "{text} has host bits set past its prefix length; did you mean {cidr}?"
        ));
    }
    Ok(cidr)
}

fn parse_for(text: &str) -> Result<Duration, String> {
    parse_duration(text).map_err(|e| e.to_string())
}

fn expiry(expires_in: Option<f64>) -> String {
    match expires_in {
        None => "until `portfw unblock`".to_string(),
        Some(secs) => format!(
            "for {}",
            format_duration(Duration::from_secs(secs.round() as u64))
        ),
    }
}

pub fn run_block(args: BlockArgs) -> anyhow::Result<ExitCode> {
    let outcome = loader::block(args.address, args.duration)?;
    let widened = if outcome.blocked != args.address {
        format!(" (the /64 of {})", args.address)
    } else {
        String::new()
    };
    match &outcome.replaced {
        Some(old) => println!(
            "portfw: blocked {}{widened} {}, replacing its {} block",
            outcome.blocked,
            expiry(outcome.expires_in),
            old.reason
        ),
        None => println!(
            "portfw: blocked {}{widened} {}",
            outcome.blocked,
            expiry(outcome.expires_in)
        ),
    }
    Ok(ExitCode::from(EXIT_OK))
}

pub fn run_unblock(args: UnblockArgs) -> anyhow::Result<ExitCode> {
    let outcome = loader::unblock(args.address)?;
    match &outcome.removed {
        Some(old) => println!(
            "portfw: unblocked {} ({} block)",
            outcome.target, old.reason
        ),
        None => println!(
            "portfw: {} was not blocked; nothing changed",
            outcome.target
        ),
    }
    if outcome.still_blocked_by_net {
        eprintln!(
            "portfw: note: {} is still blocked by a blocked prefix that contains it (see \
             `portfw status`)",
            args.address.addr
        );
    }
    Ok(ExitCode::from(EXIT_OK))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_checked() {
        assert_eq!(
            parse_address("198.51.100.7").map(|c| c.to_string()),
            Ok("198.51.100.7/32".to_string())
        );
        assert_eq!(
            parse_address("2001:db8::/48").map(|c| c.to_string()),
            Ok("2001:db8::/48".to_string())
        );
        assert!(parse_address("198.51.100.300").is_err());
        assert!(parse_address("10.0.0.0/33").is_err());
        assert!(parse_address("0.0.0.0/0").is_err());
        let host_bits = parse_address("10.1.2.3/8");
        assert!(
            host_bits
                .as_ref()
                .is_err_and(|e| e.contains("did you mean 10.0.0.0/8")),
            "{host_bits:?}"
        );
        assert!(parse_for("10m").is_ok());
        assert!(parse_for("10").is_err());
    }
}
