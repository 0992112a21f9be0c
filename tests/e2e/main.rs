//! End-to-end tests: the real `docker-ctl-server` and `docker-ctl-agent` processes against
//! the real dockerd, on SQLite and on PostgreSQL (fleets: labels, selectors, bulk operations).

/// `on_both_stores!(f)`: tests `f::sqlite` and `f::postgres` run `f(Db)` on each store.
macro_rules! on_both_stores {
    ($name:ident) => {
        mod $name {
            #[test]
            fn sqlite() {
                super::$name(docker_ctl_tests::Db::Sqlite);
            }
            #[test]
            fn postgres() {
                super::$name(docker_ctl_tests::Db::postgres());
            }
        }
    };
}

mod access;
mod arm;
mod dist;
mod enrol;
mod fleet;
mod lifecycle;
mod passthrough;
mod replicas;
mod servers;
mod stacks;
mod update;
