wrk.method = "POST"
wrk.body = '{"x": 1, "name": "aqueduct"}'
wrk.headers["Content-Type"] = "application/json"
