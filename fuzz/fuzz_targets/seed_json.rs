//! Fuzz target `seed_json`: the body is `strata_fuzzing::seed_json`; fuzz/README.md
//! says what it checks.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| strata_fuzzing::seed_json(data));
