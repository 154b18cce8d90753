use super::*;
use crate::backend::{BackendReply, PushOrder, SessionOp, Target};

fn push(target: Target, ack: bool) -> PushOrder {
    PushOrder {
        target,
        route: "r".into(),
        payload: Bytes::from_static(b"p"),
        ack_required: ack,
        priority: Priority::High,
    }
}

#[test]
fn subjects_round_trip() {
    let s = Subjects::new("gw");
    assert_eq!(s.up("chat.send"), "gw.up.chat.send");
    assert_eq!(s.parse(&s.user("a.b")), Some(Addressed::User("a.b")));
    assert_eq!(s.parse(&s.room("lobby")), Some(Addressed::Room("lobby")));
    assert_eq!(s.parse(&s.node("gw-1")), Some(Addressed::Node("gw-1")));
    assert_eq!(s.parse("gw.evt.online"), None);
    assert_eq!(s.parse("gwx.user.a"), None);
    assert_eq!(s.parse("other.user.a"), None);
}

#[test]
fn names_that_cannot_be_subjects() {
    for ok in ["alice", "alice@example.com", "room-1", "a.b.c"] {
        assert!(valid_name(ok), "{ok}");
    }
    for bad in [
        "",
        "a b",
        "a..b",
        ".a",
        "a.",
        "*",
        "a.>",
        "a\tb",
        &"x".repeat(257),
    ] {
        assert!(!valid_name(bad), "{bad:?}");
    }
}

#[test]
fn push_headers_parse_and_refuse() {
    let h = |v: &[(&str, &str)]| -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    };
    let p = push_headers(&h(&[
        ("gw-route", "chat.msg"),
        ("Gw-Ack", "1"),
        ("Gw-Priority", "high"),
    ]))
    .unwrap();
    assert_eq!(
        (p.route.as_str(), p.ack_required, p.priority),
        ("chat.msg", true, Priority::High)
    );
    let p = push_headers(&h(&[("Gw-Route", "x")])).unwrap();
    assert_eq!((p.ack_required, p.priority), (false, Priority::Normal));
    assert_eq!(
        push_headers(&h(&[])).unwrap_err(),
        HeaderError::MissingRoute
    );
    assert!(push_headers(&h(&[]))
        .unwrap_err()
        .to_string()
        .contains("Gw-Route"));
    assert_eq!(
        push_headers(&h(&[("Gw-Route", "x"), ("Gw-Ack", "maybe")])).unwrap_err(),
        HeaderError::Ack("maybe".into())
    );
    assert_eq!(
        push_headers(&h(&[("Gw-Route", "x"), ("Gw-Priority", "urgent")])).unwrap_err(),
        HeaderError::Priority("urgent".into())
    );
    assert_eq!(
        push_headers(&h(&[("Gw-Route", &"r".repeat(65))])).unwrap_err(),
        HeaderError::RouteLength
    );
}

#[test]
fn reply_splits_into_local_and_remote() {
    let reply = BackendReply {
        status: 0,
        payload: Bytes::from_static(b"ok"),
        retry_after_ms: 0,
        pushes: vec![
            push(Target::User("bob".into()), true),
            push(Target::Room("lobby".into()), false),
            push(Target::Conn(7), true),
        ],
        ops: vec![
            SessionOp::JoinRoom {
                conn_id: 7,
                room: "lobby".into(),
            },
            SessionOp::KickUser {
                user: "eve".into(),
                message: "bye".into(),
            },
        ],
    };
    let mut pbr = encode_reply(&reply);
    // One more push and op for a connection on another node.
    pbr.pushes.push(pb::PushOrder {
        target: Some(push_order::Target::Conn(pb::ConnRef {
            node: "gw-2".into(),
            conn_id: 9,
        })),
        route: "x".into(),
        ..Default::default()
    });
    pbr.ops.push(pb::SessionOp {
        op: Some(session_op::Op::KickConn(pb::KickConn {
            conn: Some(pb::ConnRef {
                node: "gw-2".into(),
                conn_id: 9,
            }),
            message: String::new(),
        })),
    });
    let mut orders = split(pbr.pushes.clone(), pbr.ops.clone(), "gw-1", true);
    let local = local_reply(&pbr, &mut orders);
    assert_eq!(local.payload, Bytes::from_static(b"ok"));
    assert_eq!(local.pushes.len(), 1);
    assert_eq!(local.pushes[0].target, Target::Conn(7));
    assert_eq!(
        local.ops,
        vec![SessionOp::JoinRoom {
            conn_id: 7,
            room: "lobby".into()
        }]
    );
    assert!(orders.refused.is_empty());
    assert_eq!(orders.remote.len(), 5);
    assert!(
        matches!(&orders.remote[0], Remote::UserPush { user, order } if user == "bob" && order.ack_required && order.priority == Priority::High)
    );
    assert!(matches!(&orders.remote[1], Remote::RoomPush { room, .. } if room == "lobby"));
    assert!(
        matches!(&orders.remote[2], Remote::Node { node, cmd } if node == "gw-2" && cmd.pushes.len() == 1)
    );
    assert!(matches!(&orders.remote[3], Remote::KickUser { user, .. } if user == "eve"));
    assert!(
        matches!(&orders.remote[4], Remote::Node { node, cmd } if node == "gw-2" && cmd.ops.len() == 1)
    );
}

#[test]
fn node_commands_act_locally_and_bad_orders_are_refused() {
    let pushes = vec![
        encode_push(&push(Target::User("bob".into()), false)),
        pb::PushOrder {
            target: None,
            ..Default::default()
        },
        pb::PushOrder {
            target: Some(push_order::Target::Room("a b".into())),
            ..Default::default()
        },
    ];
    let ops = vec![
        encode_op(&SessionOp::KickUser {
            user: "eve".into(),
            message: String::new(),
        }),
        pb::SessionOp { op: None },
    ];
    let o = split(pushes, ops, "gw-1", false);
    assert_eq!(o.pushes.len(), 1);
    assert_eq!(o.pushes[0].target, Target::User("bob".into()));
    assert_eq!(o.ops.len(), 1);
    assert!(o.remote.is_empty());
    assert_eq!(o.refused.len(), 3, "{:?}", o.refused);
}

#[test]
fn a_node_command_naming_another_node_is_refused_not_dropped() {
    let elsewhere = Some(pb::ConnRef {
        node: "gw-2".into(),
        conn_id: 7,
    });
    let pushes = vec![pb::PushOrder {
        target: Some(push_order::Target::Conn(
            elsewhere.clone().unwrap_or_default(),
        )),
        route: "r".into(),
        ..Default::default()
    }];
    let ops = vec![pb::SessionOp {
        op: Some(session_op::Op::KickConn(pb::KickConn {
            conn: elsewhere,
            message: String::new(),
        })),
    }];
    let o = split(pushes, ops, "gw-1", false);
    assert!(o.pushes.is_empty() && o.ops.is_empty() && o.remote.is_empty());
    assert_eq!(o.refused.len(), 2, "{:?}", o.refused);
}

#[test]
fn a_user_or_room_push_with_a_route_no_gateway_takes_is_refused() {
    for route in [String::new(), "r".repeat(ROUTE_BYTES_MAX + 1)] {
        let p = pb::PushOrder {
            target: Some(push_order::Target::Room("live".into())),
            route,
            ..Default::default()
        };
        let o = split(vec![p], vec![], "gw-1", true);
        assert!(o.remote.is_empty());
        assert_eq!(o.refused.len(), 1, "{:?}", o.refused);
    }
    let ok = pb::PushOrder {
        target: Some(push_order::Target::Room("live".into())),
        route: "r".repeat(ROUTE_BYTES_MAX),
        ..Default::default()
    };
    assert_eq!(split(vec![ok], vec![], "gw-1", true).remote.len(), 1);
}

#[test]
fn hot_room_names_in_config_may_be_as_long_as_room_names() {
    assert_eq!(crate::config::rooms::HOT_NAME_BYTES_MAX, NAME_BYTES_MAX);
}
