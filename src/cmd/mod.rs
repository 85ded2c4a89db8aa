//! One module per subcommand.

pub mod bandwidth;
pub mod bench;
pub mod check;
pub mod common;
pub mod compile;
pub mod device;
pub mod generate;
pub mod hint;
pub mod inspect;
pub mod progress;
pub mod run;
pub mod verify;
