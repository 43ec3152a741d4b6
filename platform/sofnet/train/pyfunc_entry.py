"""MLflow "models from code" entry: logged with the model, executed on load; defines the pyfunc by import."""

from mlflow.models import set_model

from sofnet.train.pyfunc import SofnetPyfunc

set_model(SofnetPyfunc())
