//! `OnnxModel` feeds each input in the dtype the graph declares and reads every output back as
//! f32: float16, int32 and int64 included (fp16 exports, int32 `input_ids`, int64 timesteps).

mod common;

use easeld::model::onnx::{Dtype, HostTensor, Input, OnnxModel};

#[test]
fn inputs_and_outputs_convert_to_and_from_the_declared_dtypes() {
    let runtime = common::runtime();
    let path = common::fixtures().join("onnx/dtypes.onnx");
    let mut model = OnnxModel::load(&runtime, "dtypes", &path, 1).unwrap();
    let dtypes: Vec<Dtype> = model.inputs.iter().map(|i| i.dtype).collect();
    assert_eq!(dtypes, [Dtype::F16, Dtype::I32, Dtype::I64]);
    assert_eq!(model.outputs[0].dtype, Dtype::F16);

    let half = model.find_input(&["half"], None).unwrap();
    let ints = model.find_input(&["ints"], None).unwrap();
    let long = model.find_input(&["long"], None).unwrap();
    // A rank-0 input is found by rank when its name is unknown.
    assert_eq!(model.find_input(&["timestep"], Some(&[0])).unwrap().name, "long");

    let outputs = model
        .run(vec![
            (&half, Input::Float(HostTensor::new(vec![3], vec![0.5, -1.25, 1000.0]))),
            (&ints, Input::Int(HostTensor::new(vec![3], vec![7, -2, 49407]))),
            // A float timestep fed to an int64 input truncates, as `.long()` does.
            (&long, Input::Float(HostTensor::new(vec![], vec![951.9]))),
        ])
        .unwrap();
    assert_eq!(outputs[0], HostTensor::new(vec![3], vec![1.0, -2.5, 2000.0]));
    assert_eq!(outputs[1], HostTensor::new(vec![3], vec![7.0, -2.0, 49407.0]));
    assert_eq!(outputs[2], HostTensor::new(vec![], vec![951.0]));
}

#[test]
fn a_bound_input_is_converted_once_and_fed_to_every_run() {
    let runtime = common::runtime();
    let path = common::fixtures().join("onnx/dtypes.onnx");
    let mut model = OnnxModel::load(&runtime, "dtypes", &path, 1).unwrap();
    let half = model.find_input(&["half"], None).unwrap();
    let ints = model.find_input(&["ints"], None).unwrap();
    let long = model.find_input(&["long"], None).unwrap();
    // The float16 input, bound: converted from f32 here, not at each run.
    let bound = model
        .bind(&half, HostTensor::new(vec![3], vec![0.5, -1.25, 1000.0]))
        .unwrap();
    assert_eq!(bound.shape(), [3]);
    for step in 0..3 {
        let outputs = model
            .run(vec![
                (&half, Input::Bound(&bound)),
                (&ints, Input::Int(HostTensor::new(vec![3], vec![step, -2, 49407]))),
                (&long, Input::Float(HostTensor::new(vec![], vec![951.9]))),
            ])
            .unwrap();
        assert_eq!(
            outputs[0],
            HostTensor::new(vec![3], vec![1.0, -2.5, 2000.0]),
            "run {step}"
        );
        assert_eq!(outputs[1].data[0], step as f32, "the other inputs still change per run");
    }
}

#[test]
fn a_truncated_file_is_a_load_error_that_says_so() {
    let runtime = common::runtime();
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(common::fixtures().join("onnx/dtypes.onnx")).unwrap();
    let path = dir.path().join("model.onnx");
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let message = OnnxModel::load(&runtime, "unet", &path, 1).unwrap_err().to_string();
    assert!(message.contains("truncated"), "{message}");
    assert!(message.contains("model.onnx"), "{message}");
}
