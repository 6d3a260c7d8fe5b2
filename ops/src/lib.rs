//! Operating support shared by `vigil-sensor` and `vigil-collector`, so both daemons behave the
//! same way to an operator: [`layered`] reads a YAML config file plus its drop-in directory with
//! errors that name file, line and key; [`metrics_endpoint`] serves a Prometheus registry over
//! plain HTTP. Neither knows anything about events, rules or transport.

pub mod layered;
pub mod metrics_endpoint;
