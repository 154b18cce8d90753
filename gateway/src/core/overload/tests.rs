//! The controller and buckets alone: delays are injected, no clock is read.

use super::*;

fn cfg() -> OverloadConfig {
    OverloadConfig::default()
}

/// One window: `n` frames per business priority from `users` users each,
/// the level checked for each frame; returns admitted counts (high, normal, low).
fn window(c: &mut Controller, n: u32, delay_ms: u64) -> [u32; 3] {
    let mut admitted = [0u32; 3];
    let salt = salt(1_700_000_000, 3600);
    for (i, b) in [
        RoutePriority::High,
        RoutePriority::Normal,
        RoutePriority::Low,
    ]
    .into_iter()
    .enumerate()
    {
        for u in 0..n {
            if c.arrive(priority(b, &format!("user-{u}"), salt)) {
                admitted[i] += 1;
            }
        }
    }
    c.observe(delay_ms * 1000, 100);
    c.close_window();
    admitted
}

#[test]
fn sheds_low_priority_routes_first_and_recovers_slowly() {
    let mut c = Controller::new(&cfg());
    assert_eq!(window(&mut c, 1000, 1), [1000, 1000, 1000]);
    assert_eq!(c.level(), LEVELS, "under the delay nothing is shed");

    // Overloaded (50 ms > 20 ms): each window admits about 5% less, taken
    // from the low routes until they are all shed, then from normal ones.
    let mut last_total = 3000;
    let mut low_gone_at = None;
    for w in 0..15 {
        let a = window(&mut c, 1000, 50);
        let total: u32 = a.iter().sum();
        assert!(
            total <= last_total,
            "window {w}: admitted more while overloaded"
        );
        if w > 0 {
            assert!(
                total as f64 >= last_total as f64 * 0.9,
                "window {w}: cut {last_total} -> {total}, more than alpha at a time"
            );
        }
        assert_eq!(a[0], 1000, "window {w}: high routes are shed last: {a:?}");
        if a[1] < 1000 {
            assert_eq!(
                a[2], 0,
                "window {w}: normal shed while low still served: {a:?}"
            );
        }
        if a[2] == 0 && low_gone_at.is_none() {
            low_gone_at = Some(w);
        }
        last_total = total;
    }
    let low_gone_at = low_gone_at.expect("low routes were never fully shed");
    assert!(
        low_gone_at >= 5,
        "cut too fast: all low routes gone by window {low_gone_at}"
    );
    assert!(
        c.level() < 2 * USER_LEVELS,
        "normal routes are being shed by now"
    );

    // The delay falls: recovery admits about 1% more per window.
    let before: u32 = window(&mut c, 1000, 1).iter().sum();
    let after: u32 = window(&mut c, 1000, 1).iter().sum();
    assert!(after > before, "recovering: {before} -> {after}");
    assert!(
        after as f64 <= before as f64 * 1.05 + 20.0,
        "recovery faster than beta: {before} -> {after}"
    );
    for _ in 0..400 {
        window(&mut c, 1000, 1);
    }
    assert_eq!(c.level(), LEVELS, "fully open again");
}

#[test]
fn shedding_is_consistent_per_user_within_a_period() {
    let mut c = Controller::new(&cfg());
    for _ in 0..5 {
        window(&mut c, 1000, 50);
    }
    let s = salt(1_700_000_000, 3600);
    let shed: Vec<bool> = (0..200)
        .map(|u| priority(RoutePriority::Low, &format!("user-{u}"), s) >= c.level())
        .collect();
    assert!(shed.iter().any(|&x| x) && shed.iter().any(|&x| !x));
    // The same users again, same period: the same answer for each.
    for (u, was) in shed.iter().enumerate() {
        let p = priority(RoutePriority::Low, &format!("user-{u}"), s);
        assert_eq!(p >= c.level(), *was);
    }
    // Another period reshuffles the users.
    let s2 = salt(1_700_000_000 + 3600, 3600);
    let moved = (0..200)
        .filter(|u| {
            let name = format!("user-{u}");
            priority(RoutePriority::Low, &name, s) != priority(RoutePriority::Low, &name, s2)
        })
        .count();
    assert!(moved > 150, "only {moved} of 200 users changed priority");
}

#[test]
fn quiet_cores_and_disabled_shedding_never_shed() {
    // A stall with few frames (a descheduled thread) does not cut.
    let mut c = Controller::new(&cfg());
    for _ in 0..10 {
        let a = window(&mut c, (SHED_ARRIVALS_MIN / 3) - 1, 500);
        assert_eq!(a, [20, 20, 20]);
    }
    assert_eq!(c.level(), LEVELS);
    // queue_delay_max_ms = 0: measured, never acted on.
    let mut c = Controller::new(&OverloadConfig {
        queue_delay_max_ms: 0,
        ..cfg()
    });
    window(&mut c, 1000, 5_000);
    assert_eq!(c.level(), LEVELS);
    assert_eq!(c.delay_us(), 5_000_000);
}

#[test]
fn delay_is_a_weighted_average_per_window() {
    let mut c = Controller::new(&cfg());
    c.observe(1_000, 3);
    c.observe(5_000, 1);
    c.close_window();
    assert_eq!(c.delay_us(), 2_000);
    c.close_window();
    assert_eq!(c.delay_us(), 0, "an empty window has no delay");
}

#[test]
fn buckets_allow_the_burst_then_the_rate() {
    // 10/s, burst 3, 10 ms ticks.
    let r = Rate::new(10, 3, 10).unwrap();
    let mut b = Bucket::default();
    for _ in 0..3 {
        assert_eq!(b.take(&r, 5), Ok(()));
    }
    assert_eq!(b.take(&r, 5), Err(100), "one token takes 100 ms");
    assert!(b.take(&r, 14).is_err(), "90 ms later: not yet");
    assert_eq!(b.take(&r, 15), Ok(()), "100 ms later: one");
    assert!(b.take(&r, 15).is_err());
    // Long idle: full again, never more than the burst.
    for _ in 0..3 {
        assert_eq!(b.take(&r, 1_000_000), Ok(()));
    }
    assert!(b.take(&r, 1_000_000).is_err());
    // Fractions carry over: 3/s at 10 ms ticks is 30 milli-tokens a tick.
    let r = Rate::new(3, 5, 10).unwrap();
    let mut b = Bucket::default();
    for _ in 0..5 {
        assert_eq!(b.take(&r, 1), Ok(()));
    }
    let ok = (2..=101).filter(|&t| b.take(&r, t).is_ok()).count();
    assert_eq!(ok, 3, "3 tokens in one second of 10 ms ticks");
    assert!(Rate::new(0, 5, 10).is_none(), "0 = no limit");
}

#[test]
fn config_is_checked() {
    let ok = cfg();
    assert!(ok.validate(100).is_ok());
    let bad = [
        OverloadConfig {
            queue_delay_window_ms: 50,
            ..cfg()
        },
        OverloadConfig {
            shed_alpha_pct: 0,
            ..cfg()
        },
        OverloadConfig {
            upstream_burst: 0,
            ..cfg()
        },
        OverloadConfig {
            route_priority: [("bad route".to_string(), RoutePriority::Low)].into(),
            ..cfg()
        },
    ];
    for c in bad {
        assert!(c.validate(100).is_err(), "{c:?}");
    }
    let t: OverloadConfig =
        toml::from_str("queue_delay_max_ms = 5\n[route_priority]\n\"room.like\" = \"low\"\n")
            .unwrap();
    assert_eq!(t.route_priority.get("room.like"), Some(&RoutePriority::Low));
    assert!(toml::from_str::<OverloadConfig>("queue_delay_ms = 5").is_err());
}
