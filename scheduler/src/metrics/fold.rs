//! The tenant folding rule of the queue-state metrics: at each scrape the
//! `max_tenants` tenants with the most jobs (backlog + in flight) keep their names, and
//! every other tenant is summed into `tenant="other"`. A name that does not pass the
//! tenant name rule (only a corrupt key can hold one) is folded too, so no text read
//! from Redis reaches a label unchecked.

use std::collections::BTreeMap;

use sluice_shared::queue::redis::TenantLoad;

/// The label every folded tenant is summed into.
pub const OTHER: &str = "other";

/// `tenants` folded to at most `max_tenants` names plus [`OTHER`], sorted by name. A
/// tenant really named `other` is summed with the folded ones.
pub fn fold(tenants: &[TenantLoad], max_tenants: usize) -> Vec<TenantLoad> {
    let mut ranked: Vec<&TenantLoad> = tenants.iter().collect();
    ranked.sort_by(|a, b| {
        (b.backlog + b.inflight)
            .cmp(&(a.backlog + a.inflight))
            .then_with(|| a.tenant.cmp(&b.tenant))
    });
    let mut out: BTreeMap<&str, TenantLoad> = BTreeMap::new();
    let mut named = 0usize;
    for load in ranked {
        let keeps = named < max_tenants
            && load.tenant != OTHER
            && sluice_shared::tenant::validate_name(&load.tenant).is_ok();
        let label = if keeps {
            named += 1;
            load.tenant.as_str()
        } else {
            OTHER
        };
        let slot = out.entry(label).or_insert_with(|| TenantLoad {
            tenant: label.to_owned(),
            ..TenantLoad::default()
        });
        slot.backlog += load.backlog;
        slot.inflight += load.inflight;
    }
    out.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(tenant: &str, backlog: u64, inflight: u64) -> TenantLoad {
        TenantLoad {
            tenant: tenant.to_owned(),
            backlog,
            inflight,
        }
    }

    #[test]
    fn the_largest_keep_their_names_and_the_rest_are_summed() {
        let tenants = [
            load("a", 1, 0),
            load("b", 5, 2),
            load("c", 0, 3),
            load("d", 2, 0),
        ];
        assert_eq!(
            fold(&tenants, 2),
            vec![load("b", 5, 2), load("c", 0, 3), load("other", 3, 0)]
        );
        assert_eq!(fold(&tenants, 10).len(), 4);
        assert_eq!(fold(&tenants, 0), vec![load("other", 8, 5)]);
        assert!(fold(&[], 3).is_empty());
    }

    #[test]
    fn ties_keep_names_in_name_order() {
        let tenants = [load("z", 1, 0), load("y", 1, 0)];
        assert_eq!(
            fold(&tenants, 1),
            vec![load("other", 1, 0), load("y", 1, 0)]
        );
    }

    #[test]
    fn bad_names_and_a_tenant_called_other_are_folded() {
        let tenants = [
            load("evil\"} 1\nsluice_x{a=\"", 9, 0),
            load("other", 1, 1),
            load("ok", 1, 0),
        ];
        assert_eq!(
            fold(&tenants, 5),
            vec![load("ok", 1, 0), load("other", 10, 1)]
        );
    }
}
