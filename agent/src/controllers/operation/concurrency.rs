//! The one concurrency matrix per target, used by admission.
//!
//! Only operations that already run block others: a Pending (possibly Blocked)
//! operation never counts, so blocked operations cannot wait on each other.
//! Admission for one target is serialised by a per-target lock, so two
//! conflicting operations never start together.

use vworkspace_crds::OperationType::{
    self, Backup, Migration, Restore, Rollback, RunCommand, Runbook, Upgrade,
};

/// Whether `incoming` may not start while `running` runs on the same target.
/// Symmetric by construction.
pub fn conflicts(incoming: OperationType, running: OperationType) -> bool {
    let one_way = |a: OperationType, b: OperationType| match (a, b) {
        // Migration is exclusive.
        (Migration, _) => true,
        // Release changes exclude each other.
        (Upgrade | Rollback, Upgrade | Rollback) => true,
        // Restore excludes release changes, backups and other restores.
        (Restore, Upgrade | Rollback | Backup | Restore) => true,
        (Backup | RunCommand | Runbook, _) => false,
        _ => false,
    };
    one_way(incoming, running) || one_way(running, incoming)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matrix_table() {
        use OperationType as T;
        // (incoming, running, conflicts)
        let table = [
            (T::Upgrade, T::Upgrade, true),
            (T::Upgrade, T::Rollback, true),
            (T::Rollback, T::Upgrade, true),
            (T::Restore, T::Upgrade, true),
            (T::Upgrade, T::Restore, true),
            (T::Restore, T::Backup, true),
            (T::Backup, T::Restore, true),
            (T::Restore, T::Restore, true),
            (T::Backup, T::Backup, false),
            (T::Backup, T::Upgrade, false),
            (T::Upgrade, T::Backup, false),
            (T::RunCommand, T::RunCommand, false),
            (T::Runbook, T::Upgrade, false),
            (T::RunCommand, T::Restore, false),
        ];
        for (a, b, want) in table {
            assert_eq!(conflicts(a, b), want, "{a:?} vs {b:?}");
        }
        for t in T::ALL {
            assert!(conflicts(T::Migration, t), "Migration vs {t:?}");
            assert!(conflicts(t, T::Migration), "{t:?} vs Migration");
            for u in T::ALL {
                assert_eq!(conflicts(t, u), conflicts(u, t), "symmetry {t:?} {u:?}");
            }
        }
    }
}
