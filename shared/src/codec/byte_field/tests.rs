//! Which serde calls the byte fields make, seen by a serializer that only records
//! them: one `serialize_bytes` per field for a binary format (postcard's fast path),
//! the derive's sequence of `u8`s for a human-readable one (JSON's array of numbers).

use std::fmt;

use serde::Serialize;
use serde::ser::{self, Impossible};

use crate::job::{JobId, JobInput};
use crate::outcome::{JobOutput, JobResult, Outcome};

/// A serializer that writes nothing and records each call: `bytes(n)`, `seq`, `u8`,
/// `end`, `variant(name)`, and a struct's fields by name (serializing only `stderr`'s
/// value, the one byte field a struct of the job model holds directly). It supports
/// what those use; anything else is an error (so a test that reaches it fails).
struct Recorder {
    human_readable: bool,
    calls: Vec<String>,
}

/// What [`Recorder`] records for `value`.
fn calls<T: Serialize + ?Sized>(value: &T, human_readable: bool) -> Vec<String> {
    let mut recorder = Recorder {
        human_readable,
        calls: Vec::new(),
    };
    value.serialize(&mut recorder).unwrap();
    recorder.calls
}

/// Serializes the field alone, through [`super::serialize`].
struct Field<'a>(&'a [u8]);

impl Serialize for Field<'_> {
    fn serialize<S: ser::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        super::serialize(self.0, serializer)
    }
}

macro_rules! unsupported {
    ($($method:ident($($arg:ty),*) -> $ret:ty;)*) => {
        $(fn $method(self, $(_: $arg),*) -> Result<$ret, fmt::Error> {
            Err(fmt::Error)
        })*
    };
}

impl ser::Serializer for &mut Recorder {
    type Ok = ();
    type Error = fmt::Error;
    type SerializeSeq = Self;
    type SerializeTuple = Impossible<(), fmt::Error>;
    type SerializeTupleStruct = Impossible<(), fmt::Error>;
    type SerializeTupleVariant = Impossible<(), fmt::Error>;
    type SerializeMap = Impossible<(), fmt::Error>;
    type SerializeStruct = Self;
    type SerializeStructVariant = Impossible<(), fmt::Error>;

    fn is_human_readable(&self) -> bool {
        self.human_readable
    }

    fn serialize_bytes(self, bytes: &[u8]) -> Result<(), fmt::Error> {
        self.calls.push(format!("bytes({})", bytes.len()));
        Ok(())
    }

    fn serialize_seq(self, len: Option<usize>) -> Result<Self, fmt::Error> {
        self.calls.push(format!("seq({len:?})"));
        Ok(self)
    }

    fn serialize_u8(self, _: u8) -> Result<(), fmt::Error> {
        self.calls.push("u8".into());
        Ok(())
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), fmt::Error> {
        self.calls.push(format!("variant({variant})"));
        value.serialize(self)
    }

    unsupported! {
        serialize_bool(bool) -> ();
        serialize_i8(i8) -> ();
        serialize_i16(i16) -> ();
        serialize_i32(i32) -> ();
        serialize_i64(i64) -> ();
        serialize_u16(u16) -> ();
        serialize_u32(u32) -> ();
        serialize_u64(u64) -> ();
        serialize_f32(f32) -> ();
        serialize_f64(f64) -> ();
        serialize_char(char) -> ();
        serialize_str(&str) -> ();
        serialize_none() -> ();
        serialize_unit() -> ();
        serialize_unit_struct(&'static str) -> ();
        serialize_unit_variant(&'static str, u32, &'static str) -> ();
        serialize_tuple(usize) -> Self::SerializeTuple;
        serialize_tuple_struct(&'static str, usize) -> Self::SerializeTupleStruct;
        serialize_tuple_variant(&'static str, u32, &'static str, usize) -> Self::SerializeTupleVariant;
        serialize_map(Option<usize>) -> Self::SerializeMap;
        serialize_struct_variant(&'static str, u32, &'static str, usize) -> Self::SerializeStructVariant;
    }

    fn serialize_struct(self, name: &'static str, _: usize) -> Result<Self, fmt::Error> {
        self.calls.push(format!("struct({name})"));
        Ok(self)
    }

    fn serialize_some<T: Serialize + ?Sized>(self, _: &T) -> Result<(), fmt::Error> {
        Err(fmt::Error)
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: &T,
    ) -> Result<(), fmt::Error> {
        Err(fmt::Error)
    }
}

impl ser::SerializeSeq for &mut Recorder {
    type Ok = ();
    type Error = fmt::Error;

    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), fmt::Error> {
        value.serialize(&mut **self)
    }

    fn end(self) -> Result<(), fmt::Error> {
        self.calls.push("end".into());
        Ok(())
    }
}

impl ser::SerializeStruct for &mut Recorder {
    type Ok = ();
    type Error = fmt::Error;

    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), fmt::Error> {
        self.calls.push(format!("field({key})"));
        if key == "stderr" {
            value.serialize(&mut **self)?;
        }
        Ok(())
    }

    fn end(self) -> Result<(), fmt::Error> {
        self.calls.push("end".into());
        Ok(())
    }
}

/// The derive's form of `n` bytes: a sequence of `n` `u8`s.
fn sequence(n: usize) -> Vec<String> {
    let mut calls = vec![format!("seq({:?})", Some(n))];
    calls.extend(std::iter::repeat_n("u8".to_owned(), n));
    calls.push("end".into());
    calls
}

#[test]
fn a_byte_field_is_one_bytes_call_in_a_binary_format() {
    for n in [0, 3, 4096] {
        let bytes = vec![7; n];
        assert_eq!(calls(&Field(&bytes), false), [format!("bytes({n})")]);
    }
}

#[test]
fn a_byte_field_is_the_derives_sequence_in_a_human_readable_format() {
    for n in [0, 3] {
        let bytes = vec![7; n];
        assert_eq!(calls(&Field(&bytes), true), sequence(n));
        // What a plain `Vec<u8>` (the derive) makes, call for call.
        assert_eq!(calls(&bytes, true), sequence(n));
    }
}

#[test]
fn the_job_models_inline_payloads_go_through_the_byte_field() {
    let input = JobInput::Inline(vec![1, 2, 3]);
    assert_eq!(calls(&input, false), ["variant(Inline)", "bytes(3)"]);
    let output = JobOutput::Inline(vec![1, 2, 3]);
    assert_eq!(calls(&output, false), ["variant(Inline)", "bytes(3)"]);
    let mut human = vec!["variant(Inline)".to_owned()];
    human.extend(sequence(3));
    assert_eq!(calls(&input, true), human);
    assert_eq!(calls(&output, true), human);
}

#[test]
fn a_results_stderr_goes_through_the_byte_field() {
    let mut result = JobResult::without_run(JobId(uuid::Uuid::from_u128(1)), Outcome::Success, 1);
    result.stderr = vec![b'e'; 5];
    let stderr = |human_readable| {
        let calls = calls(&result, human_readable);
        let at = calls
            .iter()
            .position(|call| call == "field(stderr)")
            .unwrap();
        let next = calls[at + 1..]
            .iter()
            .position(|call| call.starts_with("field("))
            .unwrap();
        calls[at + 1..at + 1 + next].to_vec()
    };
    assert_eq!(stderr(false), ["bytes(5)"]);
    assert_eq!(stderr(true), sequence(5));
}
