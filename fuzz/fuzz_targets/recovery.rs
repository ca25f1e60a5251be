//! Fuzz target `recovery`: the body is `strata::fuzzing::recovery`; fuzz/README.md
//! says what it checks.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| strata::fuzzing::recovery(data));
