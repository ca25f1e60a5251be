//! Fuzz target `hlc_parse`: the body is `strata::fuzzing::hlc_parse`; fuzz/README.md
//! says what it checks.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| strata::fuzzing::hlc_parse(data));
