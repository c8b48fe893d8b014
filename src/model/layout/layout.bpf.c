/*
 * Never loaded: compiled so that its skeleton carries the constants of the shared BPF
 * headers to user space (src/model/layout), instead of Rust copies kept equal by hand.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "periscope.h"
#include "histogram.h"
#include "process.h"
#include "tenants.h"

PSC_EXPORT_TYPES(enum psc_hist_layout, enum psc_process_layout, enum psc_tenant_layout);

char LICENSE[] SEC("license") = PSC_LICENSE;
