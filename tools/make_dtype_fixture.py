"""Writes tests/fixtures/onnx/dtypes.onnx: a graph whose inputs and outputs use every element
type easel converts (float16, float32, int32, int64), for the unit test of
daemon/src/model/onnx.rs. Outputs: `half_doubled` = 2·`half` (float16), `ints_as_float` =
float(`ints`) (float32), `long_as_float` = float(`long`) (float32).

    .venv-tools/bin/python tools/make_dtype_fixture.py
"""
import onnx
from onnx import TensorProto, helper

from common import FIX

half = helper.make_tensor_value_info("half", TensorProto.FLOAT16, ["n"])
ints = helper.make_tensor_value_info("ints", TensorProto.INT32, ["n"])
long = helper.make_tensor_value_info("long", TensorProto.INT64, [])
nodes = [
    helper.make_node("Add", ["half", "half"], ["half_doubled"]),
    helper.make_node("Cast", ["ints"], ["ints_as_float"], to=TensorProto.FLOAT),
    helper.make_node("Cast", ["long"], ["long_as_float"], to=TensorProto.FLOAT),
]
outputs = [
    helper.make_tensor_value_info("half_doubled", TensorProto.FLOAT16, ["n"]),
    helper.make_tensor_value_info("ints_as_float", TensorProto.FLOAT, ["n"]),
    helper.make_tensor_value_info("long_as_float", TensorProto.FLOAT, []),
]
graph = helper.make_graph(nodes, "dtypes", [half, ints, long], outputs)
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], producer_name="easel-fixtures")
model.ir_version = 9
onnx.checker.check_model(model)
out = FIX / "onnx" / "dtypes.onnx"
out.parent.mkdir(parents=True, exist_ok=True)
onnx.save(model, out)
print(out)
