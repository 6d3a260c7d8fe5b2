//! Rules from the centre at the collector, over real QUIC: who may push and fetch, what a push
//! is checked for, the long poll that tells sensors of a push at once, signatures sensors can
//! verify with `signing.pub`, and the served set surviving a restart (but not tampering).

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use support::{within, Peer, Pki, Running};
use vigil_collector::{CentralRulesConfig, Collector};
use vigil_proto::{
    read_frame, write_frame, Reply, Request, RuleFetch, RulePush, SignedRuleSet, MAX_FRAME_BYTES,
};

const RULE: &str = "title: Central test rule
id: 6a1c2d3e-4f50-4a6b-8c7d-9e0f1a2b3c4d
level: high
logsource:
  product: linux
  category: process_creation
detection:
  selection:
    CommandLine|contains: MARKER
  condition: selection
";

fn files(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(n, t)| ((*n).to_owned(), (*t).to_owned()))
        .collect()
}

fn push(pairs: &[(&str, &str)]) -> Request {
    Request::PushRules(RulePush {
        files: files(pairs),
    })
}

fn refused(reply: Reply) -> String {
    match reply {
        Reply::Refused { reason } => reason,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Opens a long-poll fetch; read its answer with [`answer`].
async fn fetch(peer: &Peer, running: Option<u64>, after: Option<u64>) -> quinn::RecvStream {
    let (mut send, recv) = peer.conn.open_bi().await.expect("open stream");
    write_frame(
        &mut send,
        &Request::FetchRules(RuleFetch { running, after }),
    )
    .await
    .expect("send fetch");
    send.finish().expect("finish");
    recv
}

async fn answer(recv: &mut quinn::RecvStream) -> SignedRuleSet {
    match within(
        "the rule set",
        read_frame::<_, Reply>(recv, MAX_FRAME_BYTES),
    )
    .await
    .expect("read reply")
    .expect("a reply")
    {
        Reply::Rules(set) => set,
        other => panic!("expected a rule set, got {other:?}"),
    }
}

fn reported_running(sensor: &str) -> bool {
    let Some(metrics) = vigil_collector::metrics::collector_metrics() else {
        return false;
    };
    metrics
        .registry()
        .gather()
        .iter()
        .filter(|f| f.name() == "vigil_collector_sensor_rules_version")
        .flat_map(|f| f.get_metric().iter())
        .any(|m| m.get_label().iter().any(|l| l.value() == sensor))
}

fn verify(public_hex: &str, set: &SignedRuleSet) -> bool {
    let hex = public_hex.trim();
    let key: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect();
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, key)
        .verify(
            &SignedRuleSet::signed_message(set.version, &set.files),
            &set.signature,
        )
        .is_ok()
}

#[tokio::test]
async fn pushes_are_checked_versioned_signed_and_reach_waiting_sensors_at_once() {
    let pki = Pki::new();
    let data = tempfile::tempdir().expect("temp dir");
    let rules_dir = data.path().join("rules");
    let mut config = pki.collector_config(data.path().join("c.db"));
    config.rules = Some(CentralRulesConfig {
        dir: rules_dir.clone(),
    });
    let collector = Running::start_with(config.clone(), tempfile::tempdir().expect("dir")).await;
    let public = std::fs::read_to_string(rules_dir.join("signing.pub")).expect("signing.pub");
    let operator = Peer::connect(collector.addr, &pki.files("alice")).await;
    let sensor = Peer::connect(collector.addr, &pki.files("sensor-1")).await;

    // Roles: sensors fetch, operators push; not the other way round.
    let reason = refused(sensor.ask(&push(&[("a.yml", RULE)])).await);
    assert!(
        reason.contains("sensor certificate may not push rules"),
        "{reason}"
    );
    let reason = refused(
        operator
            .ask(&Request::FetchRules(RuleFetch::default()))
            .await,
    );
    assert!(
        reason.contains("operator certificate may not fetch rules"),
        "{reason}"
    );

    // What a push is checked for: names, an empty set, rules that do not compile.
    let reason = refused(operator.ask(&push(&[("../a.yml", RULE)])).await);
    assert!(reason.contains("bad rule file name"), "{reason}");
    let reason = refused(operator.ask(&push(&[])).await);
    assert!(reason.contains("no rule files"), "{reason}");
    let broken = RULE.replace("condition: selection", "condition: selection and nothing");
    let reason = refused(operator.ask(&push(&[("broken.yml", &broken)])).await);
    assert!(
        reason.starts_with("broken.yml:"),
        "file:line:column first: {reason}"
    );

    // A sensor waiting with nothing served yet gets the first push as soon as it is made.
    let mut waiting = fetch(&sensor, None, None).await;
    // The collector records what a sensor runs when its fetch arrives: then it is waiting.
    within("the fetch to be waiting", async {
        while !reported_running("sensor-1") {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let marked = RULE.replace("MARKER", "first");
    assert_eq!(
        operator.ask(&push(&[("first.yml", &marked)])).await,
        Reply::RulesPushed { version: 1 }
    );
    let v1 = answer(&mut waiting).await;
    assert_eq!(v1.version, 1);
    assert_eq!(v1.files, files(&[("first.yml", &marked)]));
    assert!(verify(&public, &v1), "signed with the key in signing.pub");

    // Having seen v1, a sensor waits for v2; asking without `after` gets v1 at once.
    let mut after_v1 = fetch(&sensor, Some(1), Some(1)).await;
    assert_eq!(answer(&mut fetch(&sensor, None, None).await).await, v1);
    let second = RULE.replace("MARKER", "second");
    assert_eq!(
        operator.ask(&push(&[("second.yml", &second)])).await,
        Reply::RulesPushed { version: 2 }
    );
    let v2 = answer(&mut after_v1).await;
    assert_eq!(v2.version, 2);
    assert!(verify(&public, &v2));
    collector.stop().await;

    // A restart serves the same set, signed by the same key.
    let collector = Running::start_with(config.clone(), tempfile::tempdir().expect("dir")).await;
    let sensor = Peer::connect(collector.addr, &pki.files("sensor-1")).await;
    assert_eq!(answer(&mut fetch(&sensor, None, None).await).await, v2);
    collector.stop().await;

    // The served set edited on disk no longer matches its signature: start-up refuses it.
    let current = rules_dir.join("current.ruleset");
    let mut bytes = std::fs::read(&current).expect("current.ruleset");
    let at = bytes
        .windows(6)
        .position(|w| w == b"second")
        .expect("the rule text is in the file");
    bytes[at + 1] = b'E';
    std::fs::write(&current, &bytes).expect("tamper");
    let Err(err) = Collector::bind(&config).await else {
        panic!("a tampered rule set was served");
    };
    assert!(
        err.to_string().contains("signature does not match"),
        "{err}"
    );
}
