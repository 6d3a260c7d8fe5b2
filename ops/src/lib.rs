//! Operating support shared by `vigil-sensor` and `vigil-collector`, so both daemons behave the
//! same way to an operator: [`layered`] reads a YAML config file plus its drop-in directory with
//! errors that name file, line and key; [`metrics_endpoint`] serves a Prometheus registry over
//! plain HTTP; [`error_line`] is how every Vigil binary, the `vigil` CLI included, prints a fatal
//! error. None of it knows anything about events, rules or transport.

pub mod layered;
pub mod metrics_endpoint;

/// An error and its causes on one line, the way the binaries print a fatal error: each cause
/// after a `: `, but not one its parent's message already quotes (many errors embed their
/// source's text, and `{:#}` would print it twice).
pub fn error_line(error: &(dyn std::error::Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        let text = e.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = e.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::error_line;

    #[derive(Debug, thiserror::Error)]
    #[error("reading /etc/vigil/sensor.yaml: {0}")]
    struct Quoting(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("starting the sensor")]
    struct Outer(#[source] Quoting);

    #[test]
    fn a_cause_its_parent_already_quotes_is_printed_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        assert_eq!(
            error_line(&Outer(Quoting(io))),
            "starting the sensor: reading /etc/vigil/sensor.yaml: no such file"
        );
    }
}
