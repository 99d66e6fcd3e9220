//! boto3 against a real `strato serve` (the script is tests/py/boto3_flow.py).

mod common;

#[test]
fn boto3_flow() {
    let cloud = common::Cloud::start();
    cloud.python("boto3_flow.py", &[]);
}
