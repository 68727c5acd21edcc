use super::*;
use crate::tensor_table::{Table, Tensor};

fn model() -> ModelSpec {
    let repository = Repository::from_json(
        br#"{"version": "2.0", "models": [{"name": "digits", "version": "1", "platform": "aqueduct",
              "inputs": [{"name": "images", "datatype": "FP32", "shape": [-1, 3]},
                         {"name": "tags", "datatype": "BYTES", "shape": [-1]}],
              "outputs": [{"name": "labels", "datatype": "INT64", "shape": [-1]},
                          {"name": "ok", "datatype": "BOOL", "shape": [-1]}],
              "route": 2, "steps": [0, 1], "priority_levels": 4}]}"#,
    )
    .unwrap();
    assert_eq!(repository.version, "2.0");
    assert!(Repository::from_json(b"[]").is_err());
    repository.models.into_iter().next().unwrap()
}

fn bytes_of(items: &[&str]) -> Vec<u8> {
    let mut out = Vec::new();
    for item in items {
        out.extend_from_slice(&(item.len() as u32).to_le_bytes());
        out.extend_from_slice(item.as_bytes());
    }
    out
}

#[test]
fn paths_name_their_pages_with_versions_and_escapes() {
    assert_eq!(page_of("/v2"), Some(Page::Server));
    assert_eq!(page_of("/v2/health/ready"), Some(Page::Ready));
    assert_eq!(page_of("/v2/health/live"), Some(Page::Live));
    assert_eq!(
        page_of("/v2/models/a%20b"),
        Some(Page::Model("a b".into(), None))
    );
    assert_eq!(
        page_of("/v2/models/m/versions/3/infer"),
        Some(Page::Infer("m".into(), Some("3".into())))
    );
    assert_eq!(
        page_of("/v2/models/m/ready"),
        Some(Page::ModelReady("m".into(), None))
    );
    for other in [
        "/v2/models/",
        "/v2/models/m/x",
        "/v2/models/m/infer/x",
        "/v3",
        "/v2/models/%zz",
    ] {
        assert_eq!(page_of(other), None, "{other}");
    }
}

#[test]
fn a_json_request_becomes_a_table_of_the_models_inputs_in_its_order() {
    let model = model();
    let body = br#"{"id": "r1", "parameters": {"priority": 1, "timeout": 2500},
        "inputs": [{"name": "tags", "datatype": "BYTES", "shape": [2], "data": ["a", "bc"]},
                   {"name": "images", "datatype": "FP32", "shape": [2, 3],
                    "data": [[1, 2, 3], [4.5, 5, 6]]}],
        "outputs": [{"name": "ok", "parameters": {"binary_data": true}}, {"name": "labels"}]}"#;
    let infer = parse_infer(&model, body, None).unwrap();
    let written = infer.table().unwrap();
    let mut into = vec![7; infer.table_len()];
    infer.write_table(&mut into).unwrap();
    assert_eq!(into, written, "written in place, the same table");
    assert_eq!(infer.id.as_deref(), Some("r1"));
    assert_eq!((infer.priority, infer.timeout_us), (Some(1), Some(2500)));
    assert_eq!(infer.outputs, vec![(1, true), (0, false)]);
    let table = Table::read(&written).unwrap();
    assert_eq!(table.tensors[0].name, "images");
    assert_eq!(table.tensors[0].shape, [2, 3]);
    let floats: Vec<f32> = written[table.tensors[0].offset..][..24]
        .chunks(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert_eq!(floats, [1.0, 2.0, 3.0, 4.5, 5.0, 6.0]);
    let tags = &written[table.tensors[1].offset..][..table.tensors[1].len];
    assert_eq!(tags, bytes_of(&["a", "bc"]));
    let meta: Value = serde_json::from_slice(table.meta).unwrap();
    assert_eq!(meta["id"], "r1");
    assert_eq!(meta["parameters"]["timeout"], 2500);
    assert_eq!(aqueduct_priority(1, 4), 3);
    assert_eq!(aqueduct_priority(0, 4), 0);
    assert_eq!(aqueduct_priority(9, 4), 0);
}

#[test]
fn binary_inputs_follow_the_json_head_in_their_order() {
    let model = model();
    let head = br#"{"inputs": [{"name": "images", "datatype": "FP32", "shape": [1, 3], "parameters": {"binary_data_size": 12}},
        {"name": "tags", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 7}}],
        "parameters": {"binary_data_output": true}}"#;
    let mut body = head.to_vec();
    for x in [1.0f32, 2.0, 3.0] {
        body.extend_from_slice(&x.to_le_bytes());
    }
    body.extend_from_slice(&bytes_of(&["abc"]));
    let infer = parse_infer(&model, &body, Some(head.len())).unwrap();
    assert_eq!(infer.outputs, vec![(0, true), (1, true)]);
    let written = infer.table().unwrap();
    let table = Table::read(&written).unwrap();
    let images = &table.tensors[0];
    assert_eq!(
        &written[images.offset..images.offset + 12],
        &body[head.len()..head.len() + 12]
    );
    let mut longer = body.clone();
    longer.push(0);
    let error = parse_infer(&model, &longer, Some(head.len())).unwrap_err();
    assert!(
        error.message.contains("1 bytes of binary data"),
        "{}",
        error.message
    );
    let error = parse_infer(&model, &body, Some(body.len() + 1)).unwrap_err();
    assert!(error.message.contains("Inference-Header-Content-Length"));
}

#[test]
fn misfits_are_400s_naming_what_is_wrong() {
    let model = model();
    let cases: &[(&str, &str)] = &[
        (r#"{"inputs": []}"#, "input images is missing"),
        (r#"[1]"#, "JSON object"),
        (
            r#"{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}]}"#,
            "no input x",
        ),
        (
            r#"{"inputs": [{"name": "images", "datatype": "FP64", "shape": [1, 3], "data": [1, 2, 3]}]}"#,
            "is FP32",
        ),
        (
            r#"{"inputs": [{"name": "images", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}"#,
            "takes [-1, 3]",
        ),
        (
            r#"{"inputs": [{"name": "images", "datatype": "FP32", "shape": [1, 3], "data": [1, 2]}]}"#,
            "2 elements",
        ),
        (
            r#"{"inputs": [{"name": "images", "datatype": "FP32", "shape": [1, 3], "data": [1, "a", 3]}]}"#,
            "element 1",
        ),
        (
            r#"{"inputs": [{"name": "images", "datatype": "FP32", "shape": [1, 3]}]}"#,
            "no data",
        ),
        (
            r#"{"inputs": [{"name": "images", "datatype": "FP32", "shape": [1, 3], "parameters": {"binary_data_size": 12}}]}"#,
            "more than the 0 bytes",
        ),
        (
            r#"{"inputs": [{"name": "images", "datatype": "FP32", "shape": [1, 3], "parameters": {"shared_memory_region": "r"}}]}"#,
            "shared memory",
        ),
        (
            r#"{"inputs": [{"name": "images", "datatype": "FP32", "shape": [-1, 3], "data": []}]}"#,
            "whole numbers",
        ),
        (
            r#"{"inputs": [], "outputs": [{"name": "nope"}]}"#,
            "no output nope",
        ),
        (
            r#"{"inputs": [], "parameters": {"priority": -1}}"#,
            "priority",
        ),
    ];
    for (body, says) in cases {
        let error = parse_infer(&model, body.as_bytes(), None).unwrap_err();
        assert_eq!(error.status, 400);
        assert!(
            error.message.contains(says),
            "{body}: {} (not {says})",
            error.message
        );
    }
    let ints = ModelSpec {
        inputs: vec![TensorSpec {
            name: "n".into(),
            datatype: Datatype::Uint8,
            shape: vec![2],
        }],
        ..model
    };
    let error = parse_infer(
        &ints,
        br#"{"inputs": [{"name": "n", "datatype": "UINT8", "shape": [2], "data": [1, 300]}]}"#,
        None,
    )
    .unwrap_err();
    assert!(error.message.contains("not a UINT8"), "{}", error.message);
}

#[test]
fn an_answer_has_each_output_asked_for_as_json_or_binary() {
    let model = model();
    let infer = parse_infer(
        &model,
        br#"{"id": "7", "inputs": [
              {"name": "images", "datatype": "FP32", "shape": [0, 3], "data": []},
              {"name": "tags", "datatype": "BYTES", "shape": [0], "data": []}],
            "outputs": [{"name": "ok"}, {"name": "labels", "parameters": {"binary_data": true}}]}"#,
        None,
    )
    .unwrap();
    assert_eq!(infer.outputs, vec![(1, false), (0, true)]);
    let labels: Vec<u8> = [3i64, -1].iter().flat_map(|n| n.to_le_bytes()).collect();
    let outputs = crate::tensor_table::write(
        b"",
        &[
            Tensor {
                name: "labels",
                datatype: Datatype::Int64,
                shape: &[2],
                data: &labels,
            },
            Tensor {
                name: "ok",
                datatype: Datatype::Bool,
                shape: &[2],
                data: &[1, 0],
            },
        ],
    )
    .unwrap();
    let made = answer(&model, &infer, &outputs).unwrap();
    let head_len = made.head_len.unwrap();
    let head: Value = serde_json::from_slice(&made.body[..head_len]).unwrap();
    assert_eq!(head["id"], "7");
    assert_eq!(head["model_name"], "digits");
    assert_eq!(head["outputs"][0]["data"], serde_json::json!([true, false]));
    assert_eq!(head["outputs"][1]["parameters"]["binary_data_size"], 16);
    assert_eq!(&made.body[head_len..], &labels[..]);
    // a misfit of the model's is a 500
    let wrong = crate::tensor_table::write(
        b"",
        &[Tensor {
            name: "labels",
            datatype: Datatype::Int32,
            shape: &[2],
            data: &[0; 8],
        }],
    )
    .unwrap();
    assert_eq!(answer(&model, &infer, &wrong).unwrap_err().status, 500);
    assert_eq!(answer(&model, &infer, b"junk").unwrap_err().status, 500);
}

#[test]
fn json_numbers_of_every_datatype_read_back_as_written() {
    let cases: &[(Datatype, &str)] = &[
        (Datatype::Bool, "[true,false]"),
        (Datatype::Uint8, "[0,255]"),
        (Datatype::Uint16, "[1,65535]"),
        (Datatype::Uint32, "[2,4294967295]"),
        (Datatype::Uint64, "[3,18446744073709551615]"),
        (Datatype::Int8, "[-128,127]"),
        (Datatype::Int16, "[-32768,32767]"),
        (Datatype::Int32, "[-5,2147483647]"),
        (
            Datatype::Int64,
            "[-9223372036854775808,9223372036854775807]",
        ),
        (Datatype::Fp16, "[0.5,-2.0]"),
        (Datatype::Bf16, "[1.5,-256.0]"),
        (Datatype::Fp32, "[0.1,3.0]"),
        (Datatype::Fp64, "[0.1,-1e-300]"),
        (Datatype::Bytes, r#"["a","\u00e9"]"#),
    ];
    for (datatype, text) in cases {
        let data: Value = serde_json::from_str(text).unwrap();
        let bytes = json_data("t", *datatype, 2, &data).unwrap();
        let mut back = String::new();
        push_json_data(&mut back, *datatype, &bytes).unwrap();
        let again: Value = serde_json::from_str(&back).unwrap();
        assert_eq!(again, data, "{}: {back}", datatype.name());
    }
}

#[test]
fn metadata_names_the_model_and_its_tensors() {
    let text = model_metadata(&model());
    let value: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(value["versions"], serde_json::json!(["1"]));
    assert_eq!(value["inputs"][0]["shape"], serde_json::json!([-1, 3]));
    assert_eq!(value["outputs"][1]["datatype"], "BOOL");
    let server: Value = serde_json::from_str(&server_metadata("0.9")).unwrap();
    assert_eq!(
        server["extensions"],
        serde_json::json!(["binary_tensor_data"])
    );
    let models = [model()];
    assert!(find(&models, "digits", Some("1")).is_ok());
    assert_eq!(find(&models, "digits", Some("2")).unwrap_err().status, 404);
    assert_eq!(find(&models, "other", None).unwrap_err().status, 404);
}
