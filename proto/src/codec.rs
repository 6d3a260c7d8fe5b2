//! Frames on a stream: a 4-byte big-endian length, then a MessagePack map of an [`Envelope`].
//! Lengths are checked before any allocation so a peer cannot make us reserve memory it
//! never sends.

use serde::{de::DeserializeOwned, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::{Envelope, PROTOCOL_VERSION};

/// Largest frame either side accepts or sends.
pub const MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;

/// Deepest nesting of MessagePack containers a frame may have. The deepest real frame (a batch
/// of events with a parent process) is about ten; the limit stops a peer from making the
/// decoder recurse far on a stack it shares with other connections.
pub const MAX_DECODE_DEPTH: usize = 32;

/// Initial buffer for a frame body; it grows as the bytes arrive.
const READ_CHUNK: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The stream failed or ended in the middle of a frame.
    #[error("stream i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The peer announced a frame larger than [`MAX_FRAME_BYTES`].
    #[error("frame of {len} bytes exceeds the limit of {limit}")]
    TooLarge { len: usize, limit: usize },
    /// The bytes are not a MessagePack envelope of the expected type.
    #[error("undecodable frame: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
    /// Our own value could not be encoded (a bug, not peer input).
    #[error("unencodable frame: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    /// The peer speaks another protocol version.
    #[error("protocol version {theirs} is not supported (this side speaks {ours})")]
    Version { theirs: u16, ours: u16 },
}

/// Encodes `body` in a versioned envelope, without the length prefix.
pub fn encode<T: Serialize>(body: &T) -> Result<Vec<u8>, FrameError> {
    Ok(rmp_serde::to_vec_named(&Envelope {
        version: PROTOCOL_VERSION,
        body,
    })?)
}

/// Decodes an envelope produced by [`encode`], refusing other protocol versions.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, FrameError> {
    #[derive(serde::Deserialize)]
    struct VersionOnly {
        version: u16,
    }
    // NB: read the version alone first, so a newer peer gets a version error rather than a
    // confusing field error from a body shape we do not know.
    let VersionOnly { version } = from_slice_bounded(bytes)?;
    if version != PROTOCOL_VERSION {
        return Err(FrameError::Version {
            theirs: version,
            ours: PROTOCOL_VERSION,
        });
    }
    let envelope: Envelope<T> = from_slice_bounded(bytes)?;
    Ok(envelope.body)
}

fn from_slice_bounded<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, rmp_serde::decode::Error> {
    let mut de = rmp_serde::Deserializer::from_read_ref(bytes);
    de.set_max_depth(MAX_DECODE_DEPTH);
    serde::Deserialize::deserialize(&mut de)
}

pub async fn write_frame<W, T>(writer: &mut W, body: &T) -> Result<(), FrameError>
where
    W: AsyncWrite + Unpin,
    T: Serialize,
{
    let bytes = encode(body)?;
    if bytes.len() > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge {
            len: bytes.len(),
            limit: MAX_FRAME_BYTES,
        });
    }
    let len = u32::try_from(bytes.len()).map_err(|_| FrameError::TooLarge {
        len: bytes.len(),
        limit: MAX_FRAME_BYTES,
    })?;
    writer.write_all(&len.to_be_bytes()).await?;
    writer.write_all(&bytes).await?;
    Ok(())
}

/// Reads one frame; `Ok(None)` when the stream ended cleanly before a new frame began.
pub async fn read_frame<R, T>(reader: &mut R, limit: usize) -> Result<Option<T>, FrameError>
where
    R: AsyncRead + Unpin,
    T: DeserializeOwned,
{
    let mut len_bytes = [0u8; 4];
    match reader.read_exact(&mut len_bytes).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len_bytes) as usize;
    if len > limit.min(MAX_FRAME_BYTES) {
        return Err(FrameError::TooLarge {
            len,
            limit: limit.min(MAX_FRAME_BYTES),
        });
    }
    // NB: grow the buffer as bytes arrive rather than allocating `len` up front, so a peer that
    // announces a large frame and sends nothing costs us nothing.
    let mut bytes = Vec::with_capacity(len.min(READ_CHUNK));
    reader.take(len as u64).read_to_end(&mut bytes).await?;
    if bytes.len() < len {
        return Err(FrameError::Io(std::io::ErrorKind::UnexpectedEof.into()));
    }
    decode(&bytes).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::*;

    fn sample_alert() -> Alert {
        Alert {
            rule: RuleInfo {
                id: "r1".into(),
                title: "Shell from /tmp".into(),
                level: Level::High,
                tags: vec!["attack.execution".into()],
                description: None,
                author: None,
            },
            event: Event {
                timestamp: Timestamp(1_700_000_000_000_000_001),
                event: EventMeta {
                    kind: "alert".into(),
                    action: EventAction::Exec,
                    sequence: 7,
                    boot_ns: 42,
                },
                host: Host {
                    name: "h".into(),
                    id: "m".into(),
                },
                process: Process {
                    pid: 10,
                    executable: "/tmp/sh".into(),
                    args: vec!["sh".into(), "-c".into(), "true".into()],
                    parent: Some(Box::new(ParentProcess {
                        pid: 9,
                        executable: "/usr/bin/bash".into(),
                        ..Default::default()
                    })),
                    exit_code: Some(3),
                    ..Default::default()
                },
                user: UserRef {
                    id: 0,
                    name: Some("root".into()),
                },
                audit_user: None,
                container: None,
                ..Default::default()
            },
            dedup: None,
            correlation: None,
            response: None,
            loss: None,
        }
    }

    #[test]
    fn alert_round_trips_through_msgpack_with_flattened_event() {
        let stored = Reply::Alert(StoredAlert {
            id: 5,
            sensor: "s1".into(),
            received: Timestamp(3),
            alert: sample_alert(),
        });
        let bytes = encode(&stored).unwrap();
        assert_eq!(decode::<Reply>(&bytes).unwrap(), stored);
    }

    #[test]
    fn alert_json_is_ecs_shaped() {
        let json = serde_json::to_value(sample_alert()).unwrap();
        assert_eq!(json["rule"]["title"], "Shell from /tmp");
        assert_eq!(json["process"]["executable"], "/tmp/sh");
        assert_eq!(json["process"]["parent"]["executable"], "/usr/bin/bash");
        assert_eq!(json["event"]["action"], "exec");
        assert_eq!(json["@timestamp"], "2023-11-14T22:13:20.000000001Z");
    }

    #[test]
    fn other_versions_are_refused() {
        let bytes = rmp_serde::to_vec_named(&Envelope {
            version: 99,
            body: Subscribe { after_id: None },
        })
        .unwrap();
        let err = decode::<Subscribe>(&bytes).unwrap_err();
        assert!(
            matches!(err, FrameError::Version { theirs: 99, .. }),
            "{err}"
        );
    }

    #[test]
    fn deep_nesting_is_refused_without_recursing_far() {
        // A map with key "version" whose value is 100 000 nested one-element arrays.
        let mut bytes = vec![0x81, 0xa7];
        bytes.extend_from_slice(b"version");
        bytes.extend(std::iter::repeat_n(0x91, 100_000));
        bytes.push(0x01);
        let err = decode::<Request>(&bytes).unwrap_err();
        assert!(matches!(err, FrameError::Decode(_)), "{err}");
    }

    #[tokio::test]
    async fn oversized_length_is_refused_before_allocating() {
        let mut wire: &[u8] = &[0xff, 0xff, 0xff, 0xff, 0, 0];
        let err = read_frame::<_, Reply>(&mut wire, MAX_FRAME_BYTES)
            .await
            .unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { .. }), "{err}");
    }

    #[tokio::test]
    async fn garbage_body_is_an_error() {
        let mut wire: Vec<u8> = vec![0, 0, 0, 3, 0xc1, 0xc1, 0xc1];
        let err = read_frame::<_, Reply>(&mut wire.as_slice(), MAX_FRAME_BYTES)
            .await
            .unwrap_err();
        assert!(matches!(err, FrameError::Decode(_)), "{err}");
        wire.clear();
        assert!(
            read_frame::<_, Reply>(&mut wire.as_slice(), MAX_FRAME_BYTES)
                .await
                .unwrap()
                .is_none()
        );
    }

    #[tokio::test]
    async fn a_frame_cut_short_is_an_error_not_a_clean_end() {
        let mut wire: &[u8] = &[0, 0, 0, 10, 1, 2, 3];
        let err = read_frame::<_, Reply>(&mut wire, MAX_FRAME_BYTES)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, FrameError::Io(e) if e.kind() == std::io::ErrorKind::UnexpectedEof),
            "{err}"
        );
    }

    #[test]
    fn a_batch_without_loss_totals_still_decodes() {
        // What a sensor from before loss reporting sends.
        #[derive(serde::Serialize)]
        struct OldBatch {
            seq: u64,
            events: Vec<Event>,
            alerts: Vec<Alert>,
        }
        let old = Request::Publish(Batch {
            seq: 9,
            events: Vec::new(),
            alerts: Vec::new(),
            loss: Loss::default(),
        });
        #[derive(serde::Serialize)]
        enum OldRequest {
            Publish(OldBatch),
        }
        let bytes = encode(&OldRequest::Publish(OldBatch {
            seq: 9,
            events: Vec::new(),
            alerts: Vec::new(),
        }))
        .unwrap();
        assert_eq!(decode::<Request>(&bytes).unwrap(), old);
    }

    #[tokio::test]
    async fn frames_round_trip_over_a_stream() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let req = Request::Subscribe(Subscribe { after_id: Some(4) });
        write_frame(&mut a, &req).await.unwrap();
        let got: Request = read_frame(&mut b, MAX_FRAME_BYTES).await.unwrap().unwrap();
        assert_eq!(got, req);
    }
}
