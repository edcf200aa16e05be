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
