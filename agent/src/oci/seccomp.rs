//! A bundle's seccomp profile (`linux.seccomp`, Docker's default among them) as BPF
//! programs for the kernel: the **base** filter gives the default action to every call
//! no rule matches and allows those a rule matches (on its argument conditions); each
//! other action gets a filter of its own that takes it on its rules' matches and allows
//! the rest. They are installed base first: the kernel answers with the strictest
//! action, and among equally strict ones with the last installed filter's — so a rule's
//! `SCMP_ACT_ERRNO` with ENOSYS wins over a default `SCMP_ACT_ERRNO` with EPERM, as the
//! profile's first matching rule would. Calls this architecture does not have are
//! skipped (profiles name every architecture's); `SCMP_ACT_NOTIFY` is refused.

use std::collections::BTreeMap;
use std::str::FromStr;

use oci_spec::runtime::{LinuxSeccomp, LinuxSeccompAction, LinuxSeccompOperator};
use seccompiler::{BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule};

use crate::runtime::seccomp::{arch, compile, searched_with};

/// EPERM: what `SCMP_ACT_ERRNO` returns when the profile names no errno.
const EPERM: u32 = 1;

/// The programs to install, in order.
pub fn programs(profile: &LinuxSeccomp) -> Result<Vec<BpfProgram>, String> {
    let arch = arch().map_err(|e| e.to_string())?;
    let default = action(profile.default_action(), profile.default_errno_ret(), "defaultAction")?;
    let mut base: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    let mut by_action: Vec<(SeccompAction, BTreeMap<i64, Vec<SeccompRule>>)> = Vec::new();
    for (i, syscall) in profile.syscalls().clone().unwrap_or_default().iter().enumerate() {
        let field = format!("linux.seccomp.syscalls[{i}]");
        let taken = action(syscall.action(), syscall.errno_ret(), &format!("{field}.action"))?;
        let conditions = conditions(syscall.args().as_deref().unwrap_or_default()).map_err(|e| format!("{field}.args: {e}"))?;
        for name in syscall.names() {
            // Another architecture's call (`arm_fadvise64_64` on x86-64): nothing to filter.
            let Ok(number) = syscalls::Sysno::from_str(name) else { continue };
            let number = i64::from(number.id());
            add(&mut base, number, &conditions)?;
            if taken != SeccompAction::Allow && taken != default {
                let index = match by_action.iter().position(|(a, _)| *a == taken) {
                    Some(index) => index,
                    None => {
                        by_action.push((taken.clone(), BTreeMap::new()));
                        by_action.len() - 1
                    }
                };
                add(&mut by_action[index].1, number, &conditions)?;
            }
        }
    }
    let mut programs = Vec::new();
    if default != SeccompAction::Allow {
        programs.push(searched_with(base, default.clone(), arch).map_err(|e| e.to_string())?);
    }
    for (taken, rules) in by_action {
        programs.push(compile(SeccompFilter::new(rules, SeccompAction::Allow, taken, arch)).map_err(|e| e.to_string())?);
    }
    Ok(programs)
}

/// Adds a rule for `number`: unconditional when `conditions` is empty (an empty rule
/// list matches whatever the call's arguments), else one more alternative.
fn add(rules: &mut BTreeMap<i64, Vec<SeccompRule>>, number: i64, conditions: &[SeccompCondition]) -> Result<(), String> {
    let rule = || SeccompRule::new(conditions.to_vec()).map_err(|e| e.to_string());
    match rules.get_mut(&number) {
        Some(existing) if existing.is_empty() => {}
        _ if conditions.is_empty() => {
            rules.insert(number, Vec::new());
        }
        Some(existing) => existing.push(rule()?),
        None => {
            rules.insert(number, vec![rule()?]);
        }
    }
    Ok(())
}

fn action(action: LinuxSeccompAction, errno: Option<u32>, field: &str) -> Result<SeccompAction, String> {
    Ok(match action {
        LinuxSeccompAction::ScmpActAllow => SeccompAction::Allow,
        LinuxSeccompAction::ScmpActErrno => SeccompAction::Errno(errno.unwrap_or(EPERM)),
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => SeccompAction::KillThread,
        LinuxSeccompAction::ScmpActKillProcess => SeccompAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => SeccompAction::Trap,
        LinuxSeccompAction::ScmpActTrace => SeccompAction::Trace(errno.unwrap_or(EPERM)),
        LinuxSeccompAction::ScmpActLog => SeccompAction::Log,
        LinuxSeccompAction::ScmpActNotify => return Err(format!("{field}: SCMP_ACT_NOTIFY is not supported")),
    })
}

/// The argument conditions of one rule (all must hold), as libseccomp compares them:
/// 64-bit, `SCMP_CMP_MASKED_EQ` as `(arg & value) == valueTwo`.
fn conditions(args: &[oci_spec::runtime::LinuxSeccompArg]) -> Result<Vec<SeccompCondition>, String> {
    args.iter()
        .map(|arg| {
            let index = u8::try_from(arg.index()).ok().filter(|i| *i < 6).ok_or_else(|| format!("argument index {} (0–5)", arg.index()))?;
            let (op, value) = match arg.op() {
                LinuxSeccompOperator::ScmpCmpEq => (SeccompCmpOp::Eq, arg.value()),
                LinuxSeccompOperator::ScmpCmpNe => (SeccompCmpOp::Ne, arg.value()),
                LinuxSeccompOperator::ScmpCmpLt => (SeccompCmpOp::Lt, arg.value()),
                LinuxSeccompOperator::ScmpCmpLe => (SeccompCmpOp::Le, arg.value()),
                LinuxSeccompOperator::ScmpCmpGt => (SeccompCmpOp::Gt, arg.value()),
                LinuxSeccompOperator::ScmpCmpGe => (SeccompCmpOp::Ge, arg.value()),
                LinuxSeccompOperator::ScmpCmpMaskedEq => (SeccompCmpOp::MaskedEq(arg.value()), arg.value_two().unwrap_or(0)),
            };
            SeccompCondition::new(index, SeccompCmpArgLen::Qword, op, value).map_err(|e| e.to_string())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(json: serde_json::Value) -> LinuxSeccomp {
        serde_json::from_value(json).expect("a seccomp profile")
    }

    #[test]
    fn an_allowlist_with_an_other_action_compiles_to_stacked_filters() {
        let programs = programs(&profile(serde_json::json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [
                {"names": ["read", "write", "exit_group", "arm_fadvise64_64"], "action": "SCMP_ACT_ALLOW"},
                {"names": ["personality"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]},
                {"names": ["clone"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 2114060288, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]},
                {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
            ],
        })))
        .expect("compiles");
        assert_eq!(programs.len(), 2, "the base filter and the ENOSYS one");
        assert!(programs.iter().all(|p| !p.is_empty() && p.len() < 4096));
    }

    #[test]
    fn allow_by_default_with_a_denied_call_and_what_is_refused() {
        let deny = programs(&profile(serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"}]})))
            .expect("compiles");
        assert_eq!(deny.len(), 1, "no base filter when the default allows");
        let notify =
            programs(&profile(serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_NOTIFY"}]})));
        assert!(notify.is_err_and(|e| e.contains("syscalls[0].action: SCMP_ACT_NOTIFY")));
        let index = programs(&profile(serde_json::json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 6, "value": 1, "op": "SCMP_CMP_EQ"}]}],
        })));
        assert!(index.is_err_and(|e| e.contains("syscalls[0].args: argument index 6")));
    }
}
