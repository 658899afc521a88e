//! Fuzzing the xDS conversion (issue 16) on stable Rust with proptest: resources as a control
//! plane could send them — valid ones with bytes flipped, cut short or spliced into, and
//! arbitrary bytes — never panic the decoder or the response handling, and a response holding
//! a damaged resource changes nothing the client held but that one resource.
//!
//! Bounded: a few hundred cases per property; more on demand with `PROPTEST_CASES=100000`.
//! Failing cases are saved to `proto/proptest-regressions/` and replayed first on every run.

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

use super::round_trip::proxy_config;
use super::*;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(cases),
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/fuzz_xds.txt",
        ))),
        ..ProptestConfig::default()
    }
}

/// One change to a resource's bytes.
#[derive(Clone, Debug)]
enum Damage {
    /// XOR one byte (at an offset taken modulo the length) with a non-zero mask.
    Flip(usize, u8),
    /// Keep only the first part (a share of the length, in 1/256ths).
    Truncate(u8),
    /// Insert bytes at an offset.
    Splice(usize, Vec<u8>),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        (any::<usize>(), 1u8..=255).prop_map(|(at, m)| Damage::Flip(at, m)),
        any::<u8>().prop_map(Damage::Truncate),
        (any::<usize>(), vec(any::<u8>(), 1..12)).prop_map(|(at, b)| Damage::Splice(at, b)),
    ]
}

fn apply(bytes: &mut Vec<u8>, d: &Damage) {
    match d {
        Damage::Flip(at, mask) if !bytes.is_empty() => {
            let at = at % bytes.len();
            bytes[at] ^= mask;
        }
        Damage::Flip(..) => {}
        Damage::Truncate(share) => bytes.truncate(bytes.len() * usize::from(*share) / 256),
        Damage::Splice(at, more) => {
            let at = at % (bytes.len() + 1);
            bytes.splice(at..at, more.iter().copied());
        }
    }
}

/// The resources of one type a client holds, by name, as comparable text. (Not their
/// encoding: Envoy's map fields encode in a varying order, so equal resources can have
/// different bytes.)
fn held(resources: &Resources, ty: ResourceType) -> BTreeMap<String, String> {
    fn text<R: std::fmt::Debug>(m: &BTreeMap<String, R>) -> BTreeMap<String, String> {
        m.iter()
            .map(|(n, r)| (n.clone(), format!("{r:?}")))
            .collect()
    }
    match ty {
        ResourceType::Listener => text(&resources.listeners),
        ResourceType::Route => text(&resources.routes),
        ResourceType::Cluster => text(&resources.clusters),
        ResourceType::Endpoints => text(&resources.endpoints),
    }
}

proptest! {
    #![proptest_config(config(512))]

    /// Arbitrary bytes as any resource type: refused or taken, never a panic.
    #[test]
    fn arbitrary_bytes_never_panic(ty in 0usize..4, bytes in vec(any::<u8>(), 0..600)) {
        let ty = ResourceType::ALL[ty];
        let any = Any { type_url: ty.type_url().to_owned(), value: bytes };
        let _ = decode_resource(ty, &any);
        let update = Resources::default().accept_response(ty, &[any], &ProxyConfig::default());
        for e in &update.refused {
            prop_assert!(!e.to_string().is_empty());
        }
    }
}

proptest! {
    #![proptest_config(config(256))]

    /// One resource of a valid configuration damaged in a response that repeats the rest:
    /// never a panic; every other resource the client held stays exactly as it was; the
    /// damaged one is either taken as it now decodes or refused (with a reason) and kept at
    /// its previous version — and when its bytes no longer decode at all, nothing is removed.
    #[test]
    fn a_damaged_resource_changes_nothing_but_itself(
        config in proxy_config(),
        which in any::<prop::sample::Index>(),
        damages in vec(damage(), 1..4),
    ) {
        let xds = to_xds(&config);
        let base = ProxyConfig::default();
        let mut before = Resources::default();
        for (t, anys) in &xds {
            before = before.accept_response(*t, anys, &base).resources;
        }
        let all: Vec<(usize, usize)> = xds
            .iter()
            .enumerate()
            .flat_map(|(t, (_, anys))| (0..anys.len()).map(move |i| (t, i)))
            .collect();
        prop_assume!(!all.is_empty());
        let (t, i) = all[which.index(all.len())];
        let (ty, anys) = &xds[t];
        let victim = decode_resource(*ty, &anys[i]).unwrap().name().to_owned();

        let mut response = anys.clone();
        for d in &damages {
            apply(&mut response[i].value, d);
        }
        let damaged = decode_checked(*ty, &response[i]);
        // The name the damaged bytes now carry, if they decode far enough to have one.
        let now_named = match &damaged {
            Ok(c) => Some(c.resource.name().to_owned()),
            Err((name, _)) => name.clone(),
        };
        let update = before.accept_response(*ty, &response, &base);

        let (old, new) = (held(&before, *ty), held(&update.resources, *ty));
        for (name, any) in &old {
            // A damaged name can collide with another resource's: the response then holds
            // that name twice, and the first of the two is the one taken.
            if *name != victim && now_named.as_deref() != Some(name.as_str()) {
                prop_assert_eq!(new.get(name), Some(any), "{} changed", name);
            }
        }
        match damaged {
            Err((None, _)) => {
                prop_assert!(!update.refused.is_empty(), "undecodable bytes taken silently");
                prop_assert_eq!(new.get(&victim), old.get(&victim), "the refused one changed");
                prop_assert!(old.keys().all(|n| new.contains_key(n)), "something was removed");
            }
            Err((Some(name), _)) if name == victim => {
                prop_assert!(!update.refused.is_empty(), "an invalid resource taken silently");
                prop_assert_eq!(new.get(&victim), old.get(&victim), "the refused one changed");
            }
            Ok(c) if c.resource.name() == victim && update.refused.is_empty() => {
                // Taken: the client holds what the bytes now say.
                prop_assert!(new.contains_key(&victim));
            }
            _ => {}
        }
        for e in &update.refused {
            prop_assert!(!e.to_string().is_empty());
        }
    }
}
