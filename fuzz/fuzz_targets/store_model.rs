//! Fuzz target `store_model`: the body is `strata_fuzzing::store_model`; fuzz/README.md
//! says what it checks.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| strata_fuzzing::store_model(data));
