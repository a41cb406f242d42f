//! Single-packet knocks: the datagram `portfw knock` sends and `portfw agent` verifies (its
//! format, its HMAC), the key files both read and the agent's replay cache. The agent opens
//! a door with `loader::open_door`.
//!
//! The design is fwknop's: a plain knock sequence can be replayed by anyone who sees it,
//! so the knock is one datagram signed with a shared key (HMAC-SHA256), carrying the
//! sender's clock (a capture is stale after [`SPA_WINDOW_SECS`](portfw_common::SPA_WINDOW_SECS))
//! and a random nonce (a capture replayed within the window is refused by the replay cache).
//! The door name is signed too, so a knock for one door cannot open another.
pub mod key;
pub mod packet;
pub mod replay;

pub use key::{Key, KeyError};
pub use packet::{Knock, SpaError};
pub use replay::ReplayCache;
