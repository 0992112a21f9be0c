//! The wire format: the seed's examples, a round trip for every message type, and every
//! input check.

mod common;

use protocol::*;
use serde_json::{json, Value};

fn seed(name: &str) -> Value {
    serde_json::from_slice(&common::read_fixture(name)).expect("fixture is JSON")
}

#[test]
fn seed_examples_parse_into_typed_structs_and_serialise_back_equal() {
    let names = [
        "seed-auth.json",
        "seed-auth-response.json",
        "seed-command.json",
        "seed-command-response.json",
    ];
    for name in names {
        let original = seed(name);
        let env = Envelope::decode(original.to_string().as_bytes())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(env.to_value(), original, "{name} does not round-trip");
        let text: Value = serde_json::from_str(&env.encode()).expect("encode writes JSON");
        assert_eq!(text, original, "{name}: the encoded text differs");
    }
}

#[test]
fn seed_examples_have_the_expected_typed_content() {
    let auth = Envelope::decode(seed("seed-auth.json").to_string().as_bytes()).unwrap();
    let Message::Auth(a) = &auth.message else {
        panic!("not auth")
    };
    assert_eq!(a.agent_id, "agent-prod-01");
    assert_eq!(a.auth_token.expose(), "jwt-token-here");
    assert_eq!(a.capabilities, ["docker", "docker-compose", "swarm"]);
    assert_eq!(a.protocol_version, None);
    assert!(
        !format!("{auth:?}").contains("jwt-token-here"),
        "Debug must mask the token"
    );

    let resp = Envelope::decode(seed("seed-auth-response.json").to_string().as_bytes()).unwrap();
    let Message::AuthResponse(r) = &resp.message else {
        panic!("not auth_response")
    };
    assert_eq!(r.status, AuthStatus::Authenticated);
    assert_eq!(
        r.config.as_ref().and_then(|c| c.heartbeat_interval),
        Some(30)
    );
    assert_eq!(r.config.as_ref().and_then(|c| c.command_timeout), Some(300));

    let cmd = Envelope::decode(seed("seed-command.json").to_string().as_bytes()).unwrap();
    let Message::Command(c) = &cmd.message else {
        panic!("not command")
    };
    let op = Operation::parse(&c.operation, &c.params).expect("seed operation parses");
    let Operation::ContainerList(p) = op else {
        panic!("not container.list")
    };
    assert!(p.all);
    assert_eq!(p.filters.0.get("label"), Some(&vec!["app=web".to_string()]));

    let cr = Envelope::decode(seed("seed-command-response.json").to_string().as_bytes()).unwrap();
    let Message::CommandResponse(CommandResponsePayload::Success { data }) = &cr.message else {
        panic!()
    };
    assert_eq!(data[0]["name"], "web-1");
    assert_eq!(cr.id, cmd.id, "response id matches the command id");
}

fn one_of_each() -> Vec<Message> {
    vec![
        Message::Auth(AuthPayload {
            agent_id: "a1".into(),
            auth_token: Secret::new("t0k"),
            version: "0.1.0".into(),
            capabilities: vec!["docker".into()],
            protocol_version: Some(PROTOCOL_VERSION),
            signing_version: None,
            target: None,
            update: None,
            labels: Default::default(),
        }),
        Message::Heartbeat(HeartbeatPayload::default()),
        Message::Heartbeat(HeartbeatPayload {
            docker_reachable: Some(true),
            docker_ping_ms: Some(0.5),
            docker_version: Some("20.10.24".into()),
            containers_running: Some(2),
            containers_total: Some(5),
            load_average: Some([0.1, 0.2, 0.3]),
            mem_total_bytes: Some(1 << 30),
            mem_available_bytes: Some(1 << 29),
            agent_rss_bytes: Some(3 << 20),
            agent_uptime_secs: Some(60),
            bytes_sent: Some(1000),
            bytes_received: Some(2000),
            events_dropped: Some(0),
            commands_in_flight: Some(1),
        }),
        Message::CommandResponse(CommandResponsePayload::Success {
            data: json!([{"id": "x"}]),
        }),
        Message::CommandResponse(CommandResponsePayload::Error {
            error: ErrorBody::new(ErrorCode::NotFound, "No such container: x"),
        }),
        Message::CommandProgress(CommandProgressPayload {
            data: json!({"status": "Downloading"}),
        }),
        Message::Event(EventPayload {
            kind: "container".into(),
            action: "start".into(),
            actor_id: "abc".into(),
            attributes: [("name".to_string(), "web-1".to_string())].into(),
            time_nano: 1_700_000_000_000_000_000,
        }),
        Message::Error(ErrorPayload {
            error: ErrorBody::invalid_params("bad"),
            ref_id: Some("m1".into()),
        }),
        Message::AuthResponse(AuthResponsePayload {
            status: AuthStatus::Rejected,
            session_id: None,
            config: None,
            protocol_version: Some(1),
            error: Some(ErrorBody::new(ErrorCode::Unauthorized, "invalid token")),
        }),
        Message::Command(CommandPayload {
            operation: "container.stop".into(),
            params: json!({"id": "web-1", "t": 5}),
            timeout: Some(30),
            idempotency_key: Some("k1".into()),
        }),
        Message::ConfigUpdate(ConfigUpdatePayload {
            config: AgentSettings {
                heartbeat_interval: Some(10),
                command_timeout: None,
            },
        }),
        Message::Disconnect(DisconnectPayload {
            reason: Some("shutdown".into()),
        }),
        Message::StreamOpen(StreamOpenPayload {
            stream_id: 7,
            method: "POST".into(),
            path: "/v1.41/exec/abc/start".into(),
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: true,
            upgrade: true,
        }),
        Message::StreamResponse(StreamResponsePayload {
            stream_id: 7,
            status: 101,
            headers: vec![(
                "Content-Type".into(),
                "application/vnd.docker.raw-stream".into(),
            )],
        }),
        Message::StreamEnd(StreamEndPayload {
            stream_id: 7,
            error: None,
        }),
        Message::StreamEnd(StreamEndPayload {
            stream_id: 8,
            error: Some(ErrorBody::new(
                ErrorCode::DockerUnreachable,
                "socket closed",
            )),
        }),
        Message::StreamCancel(StreamCancelPayload {
            stream_id: 7,
            reason: Some("client closed".into()),
        }),
        Message::StreamCredit(StreamCreditPayload {
            stream_id: 7,
            bytes: 65536,
        }),
        Message::Auth(AuthPayload {
            agent_id: "a1".into(),
            auth_token: Secret::new("t0k"),
            version: "1.3.0".into(),
            capabilities: vec!["docker".into()],
            protocol_version: Some(PROTOCOL_VERSION),
            signing_version: None,
            labels: Default::default(),
            target: Some("aarch64-unknown-linux-musl".into()),
            update: Some(AgentUpdateProgressPayload {
                update_id: "u1:0".into(),
                state: UpdateState::RolledBack,
                version: "1.3.0".into(),
                bytes: None,
                error: Some(
                    ErrorBody::new(ErrorCode::Timeout, "no heartbeat within 60 s")
                        .with_details(json!({"check": "probation"})),
                ),
            }),
        }),
        Message::AgentUpdate(AgentUpdatePayload {
            update_id: "u1:0".into(),
            version: "1.3.0".into(),
            target: "aarch64-unknown-linux-musl".into(),
            path: "/api/v1/releases/1.3.0/aarch64-unknown-linux-musl".into(),
            size: 2_000_000,
        }),
        Message::AgentUpdateProgress(AgentUpdateProgressPayload {
            update_id: "u1:0".into(),
            state: UpdateState::Downloading,
            version: "1.3.0".into(),
            bytes: Some(65536),
            error: None,
        }),
        Message::Enrol(EnrolPayload {
            enrol_token: Secret::new("dctl_e_t0k"),
            name: "pi-berlin-7".into(),
            name_is_hostname: true,
            machine_id: "ab".repeat(32),
            version: "0.1.0".into(),
            protocol_version: Some(PROTOCOL_VERSION),
        }),
        Message::EnrolResponse(EnrolResponsePayload {
            status: EnrolStatus::Enrolled,
            agent_id: Some("pi-berlin-7-3f9a2c1e0b7d".into()),
            auth_token: Some(Secret::new("dctl_a_x")),
            host_id: Some("h1".into()),
            host_name: Some("pi-berlin-7".into()),
            pending: true,
            error: None,
        }),
        Message::EnrolResponse(EnrolResponsePayload {
            status: EnrolStatus::Rejected,
            agent_id: None,
            auth_token: None,
            host_id: None,
            host_name: None,
            pending: false,
            error: Some(ErrorBody::new(
                ErrorCode::Unauthorized,
                "enrolment token expired",
            )),
        }),
    ]
}

#[test]
fn every_message_type_round_trips() {
    let msgs = one_of_each();
    let mut seen: Vec<MessageType> = msgs.iter().map(Message::message_type).collect();
    seen.sort_by_key(|t| t.as_str());
    seen.dedup();
    assert_eq!(
        seen.len(),
        MessageType::ALL.len(),
        "every message type is covered"
    );
    for m in msgs {
        let env = Envelope::new("m-1", m);
        let text = env.encode();
        let back = Envelope::decode(text.as_bytes()).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(back, env, "{text}");
        // The tree path (signed messages) reads the same message.
        let tree = Envelope::from_value(serde_json::from_str(&text).unwrap());
        assert_eq!(tree.as_ref(), Ok(&env), "{text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["type"], env.message_type().as_str());
        assert!(time::parse_rfc3339(v["timestamp"].as_str().unwrap()).is_some());
    }
}

#[test]
fn enrol_messages_mask_their_secrets_and_leave_out_what_is_absent() {
    let env = Envelope::decode(
        br#"{"id":"e1","type":"enrol","timestamp":"2024-01-07T10:00:00Z",
            "payload":{"enrol_token":"dctl_e_s3cret","name":"edge-1","machine_id":"00","version":"1"}}"#,
    )
    .expect("a minimal enrol decodes");
    let Message::Enrol(e) = &env.message else {
        panic!("not enrol")
    };
    assert!(!e.name_is_hostname && e.protocol_version.is_none());
    assert_eq!(e.enrol_token.expose(), "dctl_e_s3cret");
    assert!(
        !format!("{env:?}").contains("s3cret"),
        "Debug masks the token"
    );
    let v = env.to_value();
    assert!(v["payload"].get("name_is_hostname").is_none(), "{v}");
    let refused = Envelope::new(
        "r1",
        Message::EnrolResponse(EnrolResponsePayload {
            status: EnrolStatus::Rejected,
            agent_id: None,
            auth_token: None,
            host_id: None,
            host_name: None,
            pending: false,
            error: Some(ErrorBody::new(ErrorCode::HostPending, "x")),
        }),
    );
    assert_eq!(
        refused.to_value()["payload"],
        json!({"status": "rejected", "error": {"code": "host_pending", "message": "x"}})
    );
    let ok = Envelope::new(
        "r2",
        Message::EnrolResponse(EnrolResponsePayload {
            status: EnrolStatus::Enrolled,
            agent_id: Some("a".into()),
            auth_token: Some(Secret::new("dctl_a_hidden")),
            host_id: Some("h".into()),
            host_name: Some("n".into()),
            pending: false,
            error: None,
        }),
    );
    assert!(!format!("{ok:?}").contains("dctl_a_hidden"));
    assert_eq!(ok.to_value()["payload"]["auth_token"], "dctl_a_hidden");
}

#[test]
fn the_agent_decodes_only_what_a_server_sends() {
    use MessageType as T;
    let from_agent = [
        T::Auth,
        T::Heartbeat,
        T::CommandResponse,
        T::CommandProgress,
        T::Event,
        T::StreamResponse,
        T::AgentUpdateProgress,
        T::Enrol,
    ];
    for m in one_of_each() {
        let env = Envelope::new("m-1", m);
        let text = env.encode();
        match Envelope::decode_from_server(text.as_bytes()) {
            Ok(back) => {
                assert!(!from_agent.contains(&env.message_type()), "{text}");
                assert_eq!(back, env, "{text}");
            }
            Err(e) => {
                assert!(from_agent.contains(&env.message_type()), "{text}: {e}");
                assert_eq!(e, DecodeError::NotForThisSide(env.message_type().as_str()));
                assert_eq!(e.to_error_body().code, ErrorCode::Unsupported);
            }
        }
    }
    // The envelope's checks come first, as in `decode`.
    let bad = br#"{"id":"","type":"heartbeat","timestamp":"2026-01-01T00:00:00Z"}"#;
    assert!(matches!(
        Envelope::decode_from_server(bad),
        Err(DecodeError::InvalidEnvelope(_))
    ));
}

#[test]
fn a_minimal_heartbeat_is_an_empty_object() {
    let env = Envelope::decode(
        br#"{"id":"h","type":"heartbeat","timestamp":"2024-01-07T10:00:00Z","payload":{}}"#,
    )
    .expect("minimal heartbeat");
    assert_eq!(env.message, Message::Heartbeat(HeartbeatPayload::default()));
    assert_eq!(env.to_value()["payload"], json!({}));
}

#[test]
fn unknown_payload_fields_are_ignored() {
    let text = r#"{"id":"h","type":"heartbeat","timestamp":"2024-01-07T10:00:00Z",
        "payload":{"docker_reachable":true,"gpu_temp":71,"future":{"x":1}}}"#;
    let env = Envelope::decode(text.as_bytes()).expect("newer agent's heartbeat decodes");
    let Message::Heartbeat(h) = env.message else {
        panic!()
    };
    assert_eq!(h.docker_reachable, Some(true));
    let text = r#"{"id":"c","type":"command","timestamp":"2024-01-07T10:00:00Z",
        "payload":{"operation":"system.ping","priority":"high"}}"#;
    assert!(Envelope::decode(text.as_bytes()).is_ok());
}

#[test]
fn unknown_error_codes_from_newer_peers_decode() {
    let text = r#"{"id":"e","type":"error","timestamp":"2024-01-07T10:00:00Z",
        "payload":{"code":"quota_exceeded","message":"x"}}"#;
    let env = Envelope::decode(text.as_bytes()).unwrap();
    let Message::Error(e) = env.message else {
        panic!()
    };
    assert_eq!(e.error.code, ErrorCode::Unknown);
}

#[test]
fn unknown_message_type_is_a_typed_error() {
    let text =
        r#"{"id":"x","type":"launch_missiles","timestamp":"2024-01-07T10:00:00Z","payload":{}}"#;
    let err = Envelope::decode(text.as_bytes()).unwrap_err();
    assert_eq!(err, DecodeError::UnknownType("launch_missiles".into()));
    assert_eq!(err.to_error_body().code, ErrorCode::Unsupported);
}

#[test]
fn wrong_payload_types_are_typed_errors() {
    let cases = [
        r#"{"id":"x","type":"auth","timestamp":"2024-01-07T10:00:00Z","payload":{"agent_id":5,"auth_token":"t","version":"1"}}"#,
        r#"{"id":"x","type":"heartbeat","timestamp":"2024-01-07T10:00:00Z","payload":{"containers_running":"many"}}"#,
        r#"{"id":"x","type":"heartbeat","timestamp":"2024-01-07T10:00:00Z","payload":[1,2]}"#,
        r#"{"id":"x","type":"command_response","timestamp":"2024-01-07T10:00:00Z","payload":{"status":"maybe"}}"#,
        r#"{"id":"x","type":"auth_response","timestamp":"2024-01-07T10:00:00Z","payload":{"status":"authenticated","config":{"heartbeat_interval":-3}}}"#,
    ];
    for c in cases {
        match Envelope::decode(c.as_bytes()) {
            Err(DecodeError::InvalidPayload { .. }) => {}
            other => panic!("{c}: expected InvalidPayload, got {other:?}"),
        }
    }
}

#[test]
fn missing_required_fields_are_typed_errors() {
    let cases = [
        (
            r#"{"id":"x","type":"auth","timestamp":"2024-01-07T10:00:00Z","payload":{"agent_id":"a","version":"1"}}"#,
            "auth_token",
        ),
        (
            r#"{"id":"x","type":"command","timestamp":"2024-01-07T10:00:00Z","payload":{"params":{}}}"#,
            "operation",
        ),
        (
            r#"{"id":"x","type":"event","timestamp":"2024-01-07T10:00:00Z","payload":{"kind":"container"}}"#,
            "action",
        ),
    ];
    for (c, field) in cases {
        let err = Envelope::decode(c.as_bytes()).unwrap_err();
        assert!(
            matches!(err, DecodeError::InvalidPayload { .. }),
            "{c}: {err:?}"
        );
        assert!(err.to_string().contains(field), "{err} should name {field}");
    }
    let no_id = r#"{"type":"heartbeat","timestamp":"2024-01-07T10:00:00Z","payload":{}}"#;
    assert!(matches!(
        Envelope::decode(no_id.as_bytes()),
        Err(DecodeError::InvalidEnvelope(_))
    ));
    let no_ts = r#"{"id":"x","type":"heartbeat","payload":{}}"#;
    assert!(matches!(
        Envelope::decode(no_ts.as_bytes()),
        Err(DecodeError::InvalidEnvelope(_))
    ));
    let bad_ts = r#"{"id":"x","type":"heartbeat","timestamp":"yesterday","payload":{}}"#;
    assert!(matches!(
        Envelope::decode(bad_ts.as_bytes()),
        Err(DecodeError::InvalidEnvelope(_))
    ));
    let num_id = r#"{"id":7,"type":"heartbeat","timestamp":"2024-01-07T10:00:00Z","payload":{}}"#;
    assert!(matches!(
        Envelope::decode(num_id.as_bytes()),
        Err(DecodeError::InvalidEnvelope(_))
    ));
}

#[test]
fn oversized_messages_are_refused_before_parsing() {
    let big = vec![b' '; MAX_MESSAGE_SIZE + 1];
    assert_eq!(
        Envelope::decode(&big).unwrap_err(),
        DecodeError::TooLarge {
            size: MAX_MESSAGE_SIZE + 1,
            max: MAX_MESSAGE_SIZE
        }
    );
}

#[test]
fn malformed_input_never_panics() {
    let mut nested = String::new();
    for _ in 0..100_000 {
        nested.push('[');
    }
    let cases: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"not json".to_vec(),
        b"{\"id\":".to_vec(),
        vec![0xff, 0xfe, 0x00],
        b"[]".to_vec(),
        b"null".to_vec(),
        nested.into_bytes(),
        format!(
            r#"{{"id":"x","type":"heartbeat","timestamp":"2024-01-07T10:00:00Z","payload":{}}}"#,
            "[".repeat(5000)
        )
        .into_bytes(),
    ];
    for c in cases {
        let r = Envelope::decode(&c);
        assert!(
            r.is_err(),
            "{:?} should not decode",
            String::from_utf8_lossy(&c[..c.len().min(40)])
        );
    }
}

#[test]
fn invalid_utf8_is_malformed() {
    let mut bytes = br#"{"id":"x","type":"heartbeat","timestamp":"2024-01-07T10:00:00Z","payload":{"docker_version":""#.to_vec();
    bytes.extend_from_slice(&[0xc3, 0x28]);
    bytes.extend_from_slice(br#""}}"#);
    assert!(matches!(
        Envelope::decode(&bytes),
        Err(DecodeError::Malformed(_))
    ));
}

#[test]
fn data_frames_carry_the_stream_id_and_are_bounded() {
    let f = encode_data_frame(0x0102_0304, b"hello");
    assert_eq!(&f[..4], &[1, 2, 3, 4]);
    assert_eq!(decode_data_frame(&f).unwrap(), (0x0102_0304, &b"hello"[..]));
    assert_eq!(
        decode_data_frame(&encode_data_frame(9, b"")).unwrap(),
        (9, &b""[..])
    );
    assert!(matches!(
        decode_data_frame(&[0, 1]),
        Err(DecodeError::Malformed(_))
    ));
    let big = encode_data_frame(1, &vec![0u8; STREAM_CHUNK + 1]);
    assert!(matches!(
        decode_data_frame(&big),
        Err(DecodeError::TooLarge { .. })
    ));
}

#[test]
fn a_command_response_reads_as_its_tagged_form() {
    let decode = |payload: &str| {
        Envelope::decode(
            format!(r#"{{"id":"c","type":"command_response","timestamp":"2024-01-07T10:00:00Z","payload":{payload}}}"#)
                .as_bytes(),
        )
        .map(|e| e.message)
    };
    let ok = |data| {
        Ok(Message::CommandResponse(CommandResponsePayload::Success {
            data,
        }))
    };
    assert_eq!(
        decode(r#"{"status":"success","data":[1,{"a":2}]}"#),
        ok(json!([1, {"a": 2}]))
    );
    assert_eq!(
        decode(r#"{"data":null,"status":"success"}"#),
        ok(Value::Null)
    );
    // Members of the other variant, or unknown ones, are ignored.
    assert_eq!(
        decode(r#"{"status":"success","data":1,"extra":{"x":[]}}"#),
        ok(json!(1))
    );
    assert_eq!(
        decode(r#"{"status":"error","error":{"code":"not_found","message":"gone"},"data":7}"#),
        Ok(Message::CommandResponse(CommandResponsePayload::Error {
            error: ErrorBody::new(ErrorCode::NotFound, "gone")
        }))
    );
    for (bad, names) in [
        (r#"{"status":"success"}"#, "data"),
        (r#"{"status":"error","data":1}"#, "error"),
        (r#"{"data":1}"#, "status"),
        (r#"{"status":"maybe","data":1}"#, "maybe"),
    ] {
        let e = decode(bad).unwrap_err();
        assert!(
            matches!(e, DecodeError::InvalidPayload { .. }),
            "{bad}: {e:?}"
        );
        assert!(
            e.to_string().contains(names),
            "{bad}: {e} should name {names}"
        );
    }
}

#[test]
fn text_that_is_not_an_envelope_says_which() {
    for (text, malformed) in [
        ("[1,2]", false),
        ("\"x\"", false),
        (" 7", false),
        ("nul", true),
        (
            r#"{"id":"x","type":"heartbeat","timestamp":"2024-01-07T10:00:00Z","payload":{"a":}}"#,
            true,
        ),
        (
            r#"{"id":"x","id":"y","type":"heartbeat","timestamp":"2024-01-07T10:00:00Z"}"#,
            false,
        ),
    ] {
        let e = Envelope::decode(text.as_bytes()).unwrap_err();
        if malformed {
            assert!(matches!(e, DecodeError::Malformed(_)), "{text}: {e:?}");
        } else {
            assert!(
                matches!(e, DecodeError::InvalidEnvelope(_)),
                "{text}: {e:?}"
            );
        }
    }
}

#[test]
fn deep_nesting_is_refused_even_where_the_payload_ignores_it() {
    let at = |levels: usize| {
        format!(
            r#"{{"id":"d","type":"heartbeat","timestamp":"2024-01-07T10:00:00Z","payload":{{"x":{}{}}}}}"#,
            "[".repeat(levels),
            "]".repeat(levels)
        )
    };
    // The envelope and the payload are two levels; "[" inside a string is no level.
    assert!(Envelope::decode(at(100).as_bytes()).is_ok());
    let quoted = r#"{"id":"d","type":"heartbeat","timestamp":"2024-01-07T10:00:00Z","payload":{"x":"[[[[\"[["}}"#;
    assert!(Envelope::decode(quoted.as_bytes()).is_ok(), "{quoted}");
    for levels in [126, 1000, 100_000] {
        let text = at(levels);
        assert!(
            matches!(
                Envelope::decode(text.as_bytes()),
                Err(DecodeError::Malformed(_))
            ),
            "{levels} levels"
        );
        // As the tree path (signed messages, the agent) refuses it.
        assert!(
            serde_json::from_str::<Value>(&text).is_err(),
            "{levels} levels"
        );
    }
}

#[test]
fn an_envelope_around_a_written_payload_is_the_text_encode_writes() {
    let answers = [
        CommandResponsePayload::Success {
            data: json!({"containers": [{"id": "a\"b\\c", "name": "é\u{1}\n", "n": 1.5}]}),
        },
        CommandResponsePayload::Error {
            error: ErrorBody::new(ErrorCode::DockerError, "no such container: \"x\""),
        },
    ];
    for (i, payload) in answers.into_iter().enumerate() {
        let id = format!("cmd-{i}-\"quoted\"\u{7f}");
        let written = serde_json::to_string(&payload).unwrap();
        let text = Envelope::encode_with_payload(&id, MessageType::CommandResponse, &written);
        let decoded = Envelope::decode(text.as_bytes()).expect("decodes");
        let same = Envelope {
            id: id.clone(),
            timestamp: decoded.timestamp.clone(),
            message: Message::CommandResponse(payload),
        };
        assert_eq!(text, same.encode(), "byte for byte what encode writes");
        assert_eq!(decoded.id, id);
        assert!(decoded.timestamp.ends_with('Z'), "{}", decoded.timestamp);
    }
}
