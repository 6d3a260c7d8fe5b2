//! `vigil tail`: print alerts as the collector stores them, riding out collector restarts.
//!
//! After a lost connection it reconnects with exponential backoff and resubscribes after the
//! last alert it printed (or, before the first, after the newest alert stored when it first
//! subscribed), so the collector replays what was stored in between: nothing is missed and
//! nothing printed twice. Refusals and rejected certificates end it instead,
//! because retrying would fail the same way forever.

use std::io::Write;
use std::time::Duration;

use tracing::{info, warn};

use crate::client::{Client, ClientError, ConnectOptions};
use crate::output::AlertPrinter;

const FIRST_RETRY: Duration = Duration::from_millis(200);
const MAX_RETRY: Duration = Duration::from_secs(10);

#[derive(Clone, Debug)]
pub struct TailOptions {
    pub connect: ConnectOptions,
    /// Keep trying when the collector cannot be reached at the start too (like `tail -F`);
    /// without it an unreachable collector is an error at once.
    pub retry_at_start: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum TailError {
    /// The collector could not be used, and retrying would not help.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// Standard output failed (for a closed pipe the caller may want to exit quietly).
    #[error("cannot write output: {0}")]
    Output(#[from] std::io::Error),
}

/// Prints alerts until an error that retrying cannot fix; cancel the future to stop.
pub async fn tail<W: Write>(
    options: &TailOptions,
    printer: &mut AlertPrinter<W>,
) -> Result<(), TailError> {
    let mut last_id: Option<i64> = None;
    let mut subscribed_once = false;
    let mut delay = FIRST_RETRY;
    loop {
        let ended = match Client::connect(&options.connect).await {
            Ok(client) => match client.subscribe(last_id).await {
                Ok(mut subscription) => {
                    if subscribed_once {
                        info!("reconnected to the collector");
                    }
                    subscribed_once = true;
                    delay = FIRST_RETRY;
                    let ended = loop {
                        match subscription.next().await {
                            Ok(Some(alert)) => {
                                printer.print(&alert)?;
                                last_id = Some(alert.id);
                            }
                            Ok(None) => break ClientError::NoAnswer,
                            Err(e) => break e,
                        }
                    };
                    // Nothing printed yet: resume after the newest alert the collector had when
                    // we subscribed, so alerts stored while we reconnect are not missed.
                    last_id = last_id.or(subscription.started_after());
                    ended
                }
                Err(e) => e,
            },
            Err(e) => e,
        };
        if !ended.is_transient() || !(subscribed_once || options.retry_at_start) {
            return Err(ended.into());
        }
        warn!("{ended}; retrying in {:.1}s", delay.as_secs_f32());
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(MAX_RETRY);
    }
}
