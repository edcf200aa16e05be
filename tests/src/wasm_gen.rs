//! Hand-built WebAssembly for tests that need modules no text format makes small:
//! one to make the compiler work hard, and the LEB128 and section framing they need.

/// Appends `n` as unsigned LEB128.
pub fn leb(mut n: u64, out: &mut Vec<u8>) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// Appends a section: its id, its length, its body.
pub fn section(id: u8, body: &[u8], module: &mut Vec<u8>) {
    module.push(id);
    leb(body.len() as u64, module);
    module.extend_from_slice(body);
}

/// One function of `depth` nested blocks over `locals` i64 locals: at every level,
/// `rounds` additions between locals, each followed by a conditional branch out of one
/// of the enclosing blocks, and at the end the sum of every local. Every block end is
/// a merge of every local, so the compiler's SSA form and register allocation grow
/// with depth × locals: (1000, 1000, 4) is 57 KB of wasm that takes Cranelift over a
/// minute and more than a gigabyte.
pub fn hard_to_compile(depth: u64, locals: u64, rounds: u64) -> Vec<u8> {
    let mut body = Vec::new();
    leb(1, &mut body);
    leb(locals, &mut body);
    body.push(0x7e); // i64
    for level in 0..depth {
        body.extend_from_slice(&[0x02, 0x40]); // block
        for round in 0..rounds {
            let k = level * rounds + round;
            body.push(0x20); // local.get
            leb((k * 7) % locals, &mut body);
            body.push(0x20);
            leb((k * 13 + 1) % locals, &mut body);
            body.push(0x7c); // i64.add
            body.push(0x22); // local.tee
            leb((k * 31 + 2) % locals, &mut body);
            body.push(0xa7); // i32.wrap_i64
            body.push(0x0d); // br_if
            leb(round % (level + 1), &mut body);
        }
    }
    body.extend(std::iter::repeat_n(0x0b, depth as usize));
    body.push(0x20);
    leb(0, &mut body);
    for local in 1..locals {
        body.push(0x20);
        leb(local, &mut body);
        body.push(0x7c);
    }
    body.push(0x0b);

    let mut module = b"\0asm\x01\0\0\0".to_vec();
    section(1, &[1, 0x60, 0, 1, 0x7e], &mut module); // () -> i64
    section(3, &[1, 0], &mut module);
    let mut export = vec![1, 3];
    export.extend_from_slice(b"sum");
    export.extend_from_slice(&[0, 0]);
    section(7, &export, &mut module);
    let mut code = Vec::new();
    leb(1, &mut code);
    leb(body.len() as u64, &mut code);
    code.extend_from_slice(&body);
    section(10, &code, &mut module);
    assert!(module.len() < 32 << 20, "under the module cap");
    module
}

/// A raw-ABI guest that spins 10,000,000 rounds of an LCG (tens of milliseconds of
/// bounded guest work) on each chunk, then returns the chunk uppercased: every job is long
/// enough that a batch is in flight while the fleet changes, and its output says which
/// input it ran on.
pub const SPIN_UPPER_WAT: &str = r#"(module
  (memory (export "memory") 2)
  (global $buf i32 (i32.const 65536))
  (global $x (mut i32) (i32.const 0))
  (func (export "alloc") (param $len i32) (result i32)
    (if (i32.gt_u (i32.add (global.get $buf) (local.get $len)) (i32.const 131072))
      (then unreachable))
    (global.get $buf))
  (func (export "process") (param $ptr i32) (param $len i32) (result i64)
    (local $i i32) (local $p i32) (local $end i32) (local $c i32)
    (local.set $i (i32.const 10000000))
    (loop $spin
      (global.set $x (i32.add (i32.mul (global.get $x) (i32.const 1103515245)) (i32.const 12345)))
      (local.set $i (i32.sub (local.get $i) (i32.const 1)))
      (br_if $spin (local.get $i)))
    (local.set $p (local.get $ptr))
    (local.set $end (i32.add (local.get $ptr) (local.get $len)))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $p) (local.get $end)))
        (local.set $c (i32.load8_u (local.get $p)))
        (if (i32.lt_u (i32.sub (local.get $c) (i32.const 97)) (i32.const 26))
          (then (i32.store8 (local.get $p) (i32.sub (local.get $c) (i32.const 32)))))
        (local.set $p (i32.add (local.get $p) (i32.const 1)))
        (br $next)))
    (i64.or
      (i64.shl (i64.extend_i32_u (local.get $ptr)) (i64.const 32))
      (i64.extend_i32_u (local.get $len)))))"#;
