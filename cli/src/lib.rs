//! The library behind the operator CLI `vigil`: talking to the collector as an operator
//! ([`client`]), following alerts ([`tail`]), printing them ([`output`]), running rules over
//! stored events ([`backtest`]) and making the
//! deployment's certificates ([`certs`], also used by the collector's tests).

pub mod backtest;
pub mod certs;
pub mod client;
pub mod enrollment;
pub mod output;
pub mod tail;
