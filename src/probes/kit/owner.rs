//! Who a series belongs to: the key every probe's lifecycle and the series budget share.

use crate::enrich::{Workload, Workloads};
use crate::model::{Labels, OVERFLOW};

/// Who a series belongs to: a live process (`pid` set when pid labels are on), the
/// aggregate of an executable's processes (no pid), or the overflow series.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Owner {
    pub pid: Option<u32>,
    pub name: String,
    pub workload: Workload,
}

impl Owner {
    pub fn new(pid: Option<u32>, name: impl Into<String>, workload: Workload) -> Owner {
        Owner {
            pid,
            name: name.into(),
            workload,
        }
    }

    /// The overflow series of a tenant (`None`: of no tenant).
    pub fn overflow(tenant: Option<&str>) -> Owner {
        Owner {
            pid: None,
            name: OVERFLOW.to_string(),
            workload: tenant.map(Workload::of_tenant).unwrap_or_default(),
        }
    }

    /// The overflow series of the tenant this owner belongs to.
    pub fn overflow_of(&self, workloads: &Workloads) -> Owner {
        let slot = workloads.tenant_slot(&self.workload);
        Owner::overflow(workloads.tenant_slots().name_of(slot))
    }

    pub fn is_overflow(&self) -> bool {
        self.pid.is_none() && self.name == OVERFLOW
    }

    /// The aggregate of this owner's executable.
    pub fn executable(&self) -> Owner {
        Owner {
            pid: None,
            ..self.clone()
        }
    }

    pub fn labels(&self, workloads: &Workloads) -> Labels {
        workloads.process_labels(self.pid, &self.name, &self.workload)
    }
}
