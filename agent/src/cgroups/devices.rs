//! The device allowlist: which device nodes a container may create (`mknod`), read and
//! write. Everything else is refused with EPERM, even to a container root that holds
//! CAP_MKNOD. On cgroup v1 through the devices controller (`devices.deny` /
//! `devices.allow`), on cgroup v2 through a `BPF_CGROUP_DEVICE` program attached to the
//! container's cgroup: the handful of instructions [`program`] emits (the same shape
//! runc emits), loaded with two `bpf(2)` calls. The kernel drops the program with the
//! cgroup, so nothing outlives the container.
#![allow(unsafe_code)]

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use super::CgroupError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    Char,
    Block,
}

/// One allowed device (or, with `minor: None`, every minor of a major), for every
/// access: create, read, write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceRule {
    pub kind: DeviceKind,
    pub major: u32,
    pub minor: Option<u32>,
}

const fn char_device(major: u32, minor: u32) -> DeviceRule {
    DeviceRule { kind: DeviceKind::Char, major, minor: Some(minor) }
}

/// What every container may use: `/dev/null`, `zero`, `full`, `random`, `urandom`,
/// `tty`, `ptmx` and the pseudo-terminals of its own devpts (`pts/*`, major 136).
/// Stricter than runc, which lets any node be created and only refuses opening it.
pub const DEFAULT_DEVICES: [DeviceRule; 8] = [
    char_device(1, 3),
    char_device(1, 5),
    char_device(1, 7),
    char_device(1, 8),
    char_device(1, 9),
    char_device(5, 0),
    char_device(5, 2),
    DeviceRule { kind: DeviceKind::Char, major: 136, minor: None },
];

impl DeviceRule {
    /// The rule as cgroup v1's `devices.allow` takes it: `c 1:3 rwm`, `c 136:* rwm`.
    pub fn v1_entry(&self) -> String {
        let kind = match self.kind {
            DeviceKind::Char => 'c',
            DeviceKind::Block => 'b',
        };
        let minor = self.minor.map_or_else(|| "*".to_owned(), |m| m.to_string());
        format!("{kind} {}:{minor} rwm", self.major)
    }

    /// The kernel's `BPF_DEVCG_DEV_*` value for this rule's kind.
    fn bpf_kind(&self) -> i32 {
        match self.kind {
            DeviceKind::Block => 1,
            DeviceKind::Char => 2,
        }
    }
}

/// One eBPF instruction, laid out as the kernel's `struct bpf_insn`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Instruction {
    pub code: u8,
    /// Destination register in the low nibble, source register in the high one.
    pub regs: u8,
    pub off: i16,
    pub imm: i32,
}

const LDX_W: u8 = 0x61; // BPF_LDX | BPF_MEM | BPF_W
const AND64_K: u8 = 0x57; // BPF_ALU64 | BPF_AND | BPF_K
const MOV64_K: u8 = 0xb7; // BPF_ALU64 | BPF_MOV | BPF_K
const JNE_K: u8 = 0x55; // BPF_JMP | BPF_JNE | BPF_K
const EXIT: u8 = 0x95; // BPF_JMP | BPF_EXIT

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Instruction {
    Instruction { code, regs: dst | (src << 4), off, imm }
}

/// The device program for `rules`: loads the device's type, major and minor from the
/// context (`struct bpf_cgroup_dev_ctx`: access_type = access << 16 | type, major,
/// minor), returns 1 (allow) at the first rule that matches and 0 (EPERM) after the
/// last. A pure function, so its shape is tested without the kernel.
pub fn program(rules: &[DeviceRule]) -> Vec<Instruction> {
    let mut out = vec![
        insn(LDX_W, 2, 1, 0, 0),        // r2 = ctx->access_type
        insn(AND64_K, 2, 0, 0, 0xffff), // r2 &= 0xffff: the device type
        insn(LDX_W, 4, 1, 4, 0),        // r4 = ctx->major
        insn(LDX_W, 5, 1, 8, 0),        // r5 = ctx->minor
    ];
    for rule in rules {
        // Each test skips, on mismatch, to the first instruction of the next rule.
        let tests: i16 = if rule.minor.is_some() { 3 } else { 2 };
        let mut skip = |i: i16, reg: u8, value: i32| out.push(insn(JNE_K, reg, 0, tests - i + 1, value));
        skip(0, 2, rule.bpf_kind());
        skip(1, 4, i32::try_from(rule.major).unwrap_or(i32::MAX));
        if let Some(minor) = rule.minor {
            skip(2, 5, i32::try_from(minor).unwrap_or(i32::MAX));
        }
        out.push(insn(MOV64_K, 0, 0, 0, 1));
        out.push(insn(EXIT, 0, 0, 0, 0));
    }
    out.push(insn(MOV64_K, 0, 0, 0, 0));
    out.push(insn(EXIT, 0, 0, 0, 0));
    out
}

const BPF_PROG_LOAD: i64 = 5;
const BPF_PROG_ATTACH: i64 = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;

/// The `BPF_PROG_LOAD` part of `union bpf_attr` (the kernel zero-fills the rest).
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// The `BPF_PROG_ATTACH` part of `union bpf_attr`.
#[repr(C)]
struct ProgAttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

fn bpf<T>(command: i64, attr: &mut T) -> Result<i64, std::io::Error> {
    // SAFETY: `attr` is a live, initialised #[repr(C)] prefix of `union bpf_attr` of the
    // size passed; the kernel copies it in (and, for a load, writes the verifier log
    // into the buffer the attribute points to, which the caller keeps alive).
    let result = unsafe { nix::libc::syscall(nix::libc::SYS_bpf, command, attr as *mut T, std::mem::size_of::<T>()) };
    if result < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(result)
    }
}

fn load(rules: &[DeviceRule]) -> Result<OwnedFd, String> {
    let instructions = program(rules);
    let license = b"Apache-2.0\0";
    let mut name = [0u8; 16];
    for (dst, src) in name.iter_mut().zip(b"orch_devices") {
        *dst = *src;
    }
    let mut log = vec![0u8; 64 * 1024];
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: u32::try_from(instructions.len()).unwrap_or(u32::MAX),
        insns: instructions.as_ptr() as u64,
        license: license.as_ptr() as u64,
        prog_name: name,
        expected_attach_type: BPF_CGROUP_DEVICE,
        ..ProgLoadAttr::default()
    };
    let fd = match bpf(BPF_PROG_LOAD, &mut attr) {
        Ok(fd) => fd,
        Err(first) => {
            // Again with the verifier's log, to say why.
            attr.log_level = 1;
            attr.log_size = u32::try_from(log.len()).unwrap_or(u32::MAX);
            attr.log_buf = log.as_mut_ptr() as u64;
            let _ = bpf(BPF_PROG_LOAD, &mut attr);
            let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
            return Err(format!("bpf(BPF_PROG_LOAD) of the device program: {first} {}", String::from_utf8_lossy(&log[..end]).trim()));
        }
    };
    let fd = i32::try_from(fd).map_err(|_| "bpf(BPF_PROG_LOAD) returned no descriptor".to_owned())?;
    // SAFETY: the kernel just returned this descriptor and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Attaches the device program for `rules` to the cgroup v2 directory `dir`.
pub fn attach_program(dir: &Path, rules: &[DeviceRule]) -> Result<(), CgroupError> {
    let failed = |reason: String| CgroupError::Devices { path: dir.to_owned(), reason };
    let program = load(rules).map_err(failed)?;
    let cgroup = std::fs::File::open(dir).map_err(|e| failed(format!("open: {e}")))?;
    let mut attr = ProgAttachAttr {
        target_fd: u32::try_from(cgroup.as_raw_fd()).unwrap_or(u32::MAX),
        attach_bpf_fd: u32::try_from(program.as_raw_fd()).unwrap_or(u32::MAX),
        attach_type: BPF_CGROUP_DEVICE,
        // Programs of the ancestors (systemd's, say) keep running too: all must allow.
        attach_flags: BPF_F_ALLOW_MULTI,
        replace_bpf_fd: 0,
    };
    bpf(BPF_PROG_ATTACH, &mut attr).map_err(|e| failed(format!("bpf(BPF_PROG_ATTACH): {e}")))?;
    // The cgroup holds the program now; our descriptors close here.
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_entries() {
        let entries: Vec<String> = DEFAULT_DEVICES.iter().map(DeviceRule::v1_entry).collect();
        assert_eq!(entries, ["c 1:3 rwm", "c 1:5 rwm", "c 1:7 rwm", "c 1:8 rwm", "c 1:9 rwm", "c 5:0 rwm", "c 5:2 rwm", "c 136:* rwm"]);
        assert_eq!(DeviceRule { kind: DeviceKind::Block, major: 7, minor: Some(0) }.v1_entry(), "b 7:0 rwm");
    }

    /// Runs a program the way the kernel would, for the few instructions it uses.
    fn interpret(program: &[Instruction], kind: i32, access: i32, major: u32, minor: u32) -> u64 {
        let ctx = [u32::try_from((access << 16) | kind).unwrap_or(0), major, minor];
        let mut regs = [0u64; 11];
        let mut pc = 0usize;
        loop {
            let i = program[pc];
            let (dst, src) = (usize::from(i.regs & 0xf), usize::from(i.regs >> 4));
            pc += 1;
            match i.code {
                LDX_W => {
                    assert_eq!(src, 1, "loads are from the context");
                    regs[dst] = u64::from(ctx[usize::try_from(i.off).unwrap_or(0) / 4]);
                }
                AND64_K => regs[dst] &= u64::try_from(i.imm).unwrap_or(0),
                MOV64_K => regs[dst] = u64::try_from(i.imm).unwrap_or(0),
                JNE_K => {
                    if regs[dst] != u64::try_from(i.imm).unwrap_or(0) {
                        pc += usize::try_from(i.off).unwrap_or(0);
                    }
                }
                EXIT => return regs[0],
                other => panic!("unexpected opcode {other:#x}"),
            }
        }
    }

    #[test]
    fn the_program_allows_exactly_the_list() {
        let program = program(&DEFAULT_DEVICES);
        const CHAR: i32 = 2;
        const BLOCK: i32 = 1;
        const MKNOD: i32 = 1;
        const READ: i32 = 2;
        let cases = [
            (CHAR, MKNOD, 1, 3, 1),  // /dev/null
            (CHAR, READ, 1, 9, 1),   // /dev/urandom
            (CHAR, READ, 5, 2, 1),   // /dev/ptmx
            (CHAR, READ, 136, 7, 1), // /dev/pts/7
            (CHAR, READ, 1, 1, 0),   // /dev/mem
            (CHAR, READ, 5, 1, 0),   // /dev/console
            (BLOCK, MKNOD, 7, 0, 0), // a loop device
            (BLOCK, READ, 8, 0, 0),  // the first disk
            (BLOCK, READ, 1, 3, 0),  // a block device with null's numbers
            (CHAR, READ, 137, 0, 0), // another major
        ];
        for (kind, access, major, minor, allowed) in cases {
            assert_eq!(interpret(&program, kind, access, major, minor), allowed, "type {kind} {major}:{minor}");
        }
        assert_eq!(interpret(&super::program(&[]), CHAR, READ, 1, 3), 0, "an empty list allows nothing");
    }
}
