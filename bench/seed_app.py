"""The seed guide's publish pattern, kept faithfully as the baseline: a new pika connection per request,
a queue declare, a persistent publish without confirms, all inside an `async def` (so it blocks the loop)."""

from __future__ import annotations

import json
import os
import uuid

import pika
from fastapi import FastAPI

app = FastAPI()
URL = os.environ.get("SEED_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")


@app.post("/send-task")
async def send_task(task: dict) -> dict:
    connection = pika.BlockingConnection(pika.URLParameters(URL))
    channel = connection.channel()
    channel.queue_declare(queue="task_queue", durable=True)
    task_id = str(uuid.uuid4())
    channel.basic_publish(
        exchange="",
        routing_key="task_queue",
        body=json.dumps({"task_id": task_id, **task}),
        properties=pika.BasicProperties(delivery_mode=2),
    )
    connection.close()
    return {"task_id": task_id, "status": "queued"}
